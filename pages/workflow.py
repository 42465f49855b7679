"""One workflow (`?workflow=<id>`): read it and move it and its tasks through their lifecycle.

A page of its own, hidden from the sidebar, so that the sidebar's "Workflows" entry is another
page: following it from here opens the list (as it left it), where a link to the page one is
already on would only run this page again. Without a workflow in the link it opens the list.
"""

from __future__ import annotations

import streamlit as st

from cqrs_core.app import ui
from cqrs_core.app.screens import workflow_detail, workflow_list

ui.require_entry_point()
ui.show_toasts()  # what the last action confirmed before its rerun

workflow_list.keep_state()  # so that the list comes back with the same filters, sort and page
workflow_param = st.query_params.get("workflow")
if not workflow_param:  # "All workflows" removed it, or a link came without one
    st.switch_page("pages/workflows.py")
workflow_detail.show(workflow_param)
