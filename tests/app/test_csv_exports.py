"""The Workflows page's CSV export, as its button builds it, with text a spreadsheet would run
as a formula: every such text cell starts with a quote; numbers stay numbers."""
# ruff: noqa: F811  (pytest fixtures imported from page_harness)

import csv
import io

from page_harness import HOSTILE_INPUTS, app_env, create_workflow, rerun, run_page, seed  # noqa: F401
from streamlit.runtime.media_file_manager import MediaFileManager

from cqrs_core.ui import csv_safe

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
NUMBER_COLUMNS = {"duration_seconds", "task_total", "task_completed", "task_failed", "progress_pct"}
FORMULAS = [s for s in HOSTILE_INPUTS if s.strip()[:1] in FORMULA_STARTS and len(s.strip()) <= 40]


def plant(svc) -> None:
    for i, text in enumerate(FORMULAS):
        create_workflow(svc, actor=text.strip() or "x", title=text, question=f"{text}", tags=[text, "export"],
                        tasks=[{"name": "t", "assignee": "bob"}] if i % 2 else [])
    create_workflow(svc, title="Plain title", question="-1", tags=["export"])


def test_workflow_export_neutralises_formula_cells_and_keeps_numbers(db_url, app_env, monkeypatch):
    assert {"=1+2", "+1", "-1+1", "@SUM(1)"} <= {s.strip() for s in FORMULAS}
    builders = {}
    add_deferred = MediaFileManager.add_deferred

    def spy(self, data_callable, mimetype, coordinates, file_name=None, **kwargs):
        builders[file_name] = data_callable
        return add_deferred(self, data_callable, mimetype, coordinates, file_name=file_name, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add_deferred", spy)
    seed(db_url, plant)
    app_env(db_url)
    run_page("pages/workflows.py")

    rows = list(csv.DictReader(io.StringIO(builders["workflows.csv"]().decode("utf-8"))))
    assert len(rows) == len(FORMULAS) + 1
    for row in rows:
        for column, cell in row.items():
            if column in NUMBER_COLUMNS:
                assert cell == "" or float(cell) >= 0, (column, cell)
            else:
                assert not cell.startswith(FORMULA_STARTS), (column, cell)
    by_title = {r["title"]: r for r in rows}
    for text in FORMULAS:
        row = by_title[csv_safe(text.strip())]
        assert row["research_question"] == csv_safe(text.strip()) and row["owner"] == csv_safe(text.strip())
        assert row["tags"].split(";")[0] == csv_safe(text.strip())  # a tag list starting with one is one cell
    assert by_title["Plain title"]["research_question"] == "'-1"  # text, even when it looks like a number
