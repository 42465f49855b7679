"""Screens too large for one page file, drawn by the page in `pages/` that shows them: the
Workflows page's list (`workflow_list`) and its detail of one workflow (`workflow_detail`)."""
