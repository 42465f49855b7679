"""Workflows: find research workflows (filters, full-text search, sort, pages, CSV); selecting
one opens it on the Workflow page (pages/workflow.py, `?workflow=<id>`).

The two screens live in `cqrs_core.app.screens`: `workflow_list` and `workflow_detail`.
"""

from __future__ import annotations

import streamlit as st

from cqrs_core.app import ui
from cqrs_core.app.screens import workflow_list

ui.require_entry_point()
workflow_param = st.query_params.get("workflow")
if workflow_param:  # a link from before the detail had a page of its own
    st.switch_page("pages/workflow.py", query_params={"workflow": workflow_param})
ui.show_toasts()  # what the last action confirmed before its rerun
workflow_list.show()
