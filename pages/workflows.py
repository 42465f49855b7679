"""Workflows: find research workflows (filters, full-text search, sort, pages, CSV) and open one
(`?workflow=<id>`) to read it and move it and its tasks through their lifecycle.

The two screens live in `cqrs_core.app.screens`: `workflow_list` and `workflow_detail`.
"""

from __future__ import annotations

import streamlit as st

from cqrs_core.app import ui
from cqrs_core.app.screens import workflow_detail, workflow_list

ui.require_entry_point()
ui.show_toasts()  # what the last action confirmed before its rerun

workflow_param = st.query_params.get("workflow")
if workflow_param:
    workflow_list.keep_state()  # so that "All workflows" returns to the same list
    workflow_detail.show(workflow_param)
else:
    workflow_list.show()
