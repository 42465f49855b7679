"""The Workflows page's CSV export, as its button builds it, with text a spreadsheet would run
as a formula, at the start of a cell or after a separator: every cell is quoted, every such text
cell starts with a quote, tags are joined with a character no spreadsheet splits on, and
numbers stay numbers."""
# ruff: noqa: F811  (pytest fixtures imported from page_harness)

import csv
import io
import re

import pandas as pd
import pytest
from page_harness import HOSTILE_INPUTS, app_env, create_workflow, rerun, run_page, seed  # noqa: F401
from streamlit.runtime.media_file_manager import MediaFileManager

from cqrs_core.app.ui import csv_safe, dataframe_csv

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# A formula character where a spreadsheet may start a cell: at the start, or after a separator
# (`;` / `,` in the locale's CSV dialect, tab, `|`, a line break) and any spaces.
FORMULA_CELL = re.compile(r"(?:^|[;,|\t\r\n])[ \t]*[=+\-@\t\r]")
NUMBER_COLUMNS = {"duration_seconds", "task_total", "task_completed", "task_failed", "progress_pct"}
FORMULAS = [s for s in HOSTILE_INPUTS if s.strip()[:1] in FORMULA_STARTS and len(s.strip()) <= 40]
SEPARATED = [
    s for s in HOSTILE_INPUTS if s.strip()[:1] not in FORMULA_STARTS and FORMULA_CELL.search(s.strip())
]
# The security review's cells: accepted by the command validators, a formula after a `;`.
REVIEW_TITLE = "Q3 report;=1+1"
REVIEW_TAGS = ["safe", "=cmd|' /C calc'!A0"]
PLANTED = [s for s in FORMULAS + SEPARATED if s != REVIEW_TITLE]  # that title is planted with the tags


def inert(cell: str) -> bool:
    """No spreadsheet runs `cell` (as read back from the CSV) as a formula, wherever it splits it."""
    return cell.startswith("'") or not FORMULA_CELL.search(cell)


def every_cell_quoted(text: str) -> bool:
    """Every field of the CSV text is quoted: a reader in QUOTE_NONNUMERIC mode turns an unquoted
    field into a float (and fails on an unquoted empty one)."""
    try:
        return all(
            isinstance(cell, str)
            for row in csv.reader(io.StringIO(text), quoting=csv.QUOTE_NONNUMERIC)
            for cell in row
        )
    except ValueError:
        return False


@pytest.fixture
def export_builders(monkeypatch):
    """The data callables of the page's deferred download buttons, by file name."""
    builders = {}
    add_deferred = MediaFileManager.add_deferred

    def spy(self, data_callable, mimetype, coordinates, file_name=None, **kwargs):
        builders[file_name] = data_callable
        return add_deferred(self, data_callable, mimetype, coordinates, file_name=file_name, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add_deferred", spy)
    return builders


def plant(svc) -> None:
    for i, text in enumerate(PLANTED):
        create_workflow(
            svc,
            actor=text.strip() or "x",
            title=text,
            question=f"{text}",
            tags=[text, "export"],
            tasks=[{"name": "t", "assignee": "bob"}] if i % 2 else [],
        )
    create_workflow(svc, title="Plain title", question="-1", tags=["export"])
    create_workflow(svc, title=REVIEW_TITLE, question="Fine", tags=REVIEW_TAGS)


def test_workflow_export_neutralises_formula_cells_and_keeps_numbers(db_url, app_env, export_builders):
    assert {"=1+2", "+1", "-1+1", "@SUM(1)"} <= {s.strip() for s in FORMULAS}
    assert {"Q3 report;=1+1", "bob;=1+1", "a, +1", "x | @SUM(1)"} <= set(SEPARATED)
    seed(db_url, plant)
    app_env(db_url)
    run_page("pages/workflows.py")

    exported = export_builders["workflows.csv"]().decode("utf-8")
    assert every_cell_quoted(exported)
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert len(rows) == len(PLANTED) + 2
    for row in rows:
        for column, cell in row.items():
            if column in NUMBER_COLUMNS:
                assert cell == "" or float(cell) >= 0, (column, cell)
            else:
                assert inert(cell), (column, cell)
    by_title = {r["title"]: r for r in rows}
    for text in PLANTED:
        row = by_title["'" + text.strip()]
        assert row["research_question"] == row["owner"] == "'" + text.strip()
        assert row["tags"] == f"'{text.strip()} | export"  # a tag list holding one is one cell, quoted
    assert by_title["Plain title"]["research_question"] == "'-1"  # text, even when it looks like a number
    assert by_title["Plain title"]["tags"] == "export"
    numbers = pd.read_csv(io.StringIO(exported))  # a quoted number is still read as a number
    assert all(pd.api.types.is_numeric_dtype(numbers[column]) for column in NUMBER_COLUMNS)


def test_the_reviewers_formula_after_a_semicolon_is_neutralised_in_title_and_tags(
    db_url, app_env, export_builders
):
    seed(db_url, plant)
    app_env(db_url)
    run_page("pages/workflows.py")

    exported = export_builders["workflows.csv"]().decode("utf-8")
    review = next(r for r in csv.DictReader(io.StringIO(exported)) if r["research_question"] == "Fine")
    assert review["title"] == "'Q3 report;=1+1"
    assert review["tags"] == "'safe | =cmd|' /C calc'!A0"  # joined with " | ", not a separator
    assert '"\'Q3 report;=1+1"' in exported and "\"'safe | =cmd|' /C calc'!A0\"" in exported


def test_a_statistics_table_is_quoted_with_formulas_after_separators_neutralised():
    table = pd.DataFrame(
        {
            "assignee": ["bob;=1+1", "=2+2", "carol", "x, @SUM(1)"],
            "open_tasks": [1, 2, -3, 4],
            "share": [0.5, -1.25, 0.0, 1.0],
        }
    )
    exported = dataframe_csv(table).decode("utf-8")

    assert exported.splitlines() == [
        '"assignee","open_tasks","share"',
        '"\'bob;=1+1","1","0.5"',
        '"\'=2+2","2","-1.25"',
        '"carol","-3","0.0"',
        '"\'x, @SUM(1)","4","1.0"',
    ]
    back = pd.read_csv(io.StringIO(exported))
    assert back["open_tasks"].tolist() == [1, 2, -3, 4] and back["share"].tolist() == [0.5, -1.25, 0.0, 1.0]


@pytest.mark.parametrize(
    "text",
    [
        "=1+2",
        "-1",
        "@SUM(1)",
        "\tx",
        "\rx",
        "Q3 report;=1+1",
        "safe;=cmd|' /C calc'!A0",
        "a,+1",
        "a; -1",
        "a;\t=1",
        "x | @SUM(1)",
        "first line\n-1+1",
        "first line\r\n=1+2",
    ],
)
def test_text_a_spreadsheet_could_run_gets_a_leading_quote(text):
    assert csv_safe(text) == "'" + text


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "a;b",
        "a, b",
        "x - y",
        "1,5",
        "a=b",
        "e-mail: a@b.example",
        "",
        None,
        -1,
        -1.5,
        0,
        2.5,
    ],
)
def test_plain_text_and_numbers_are_written_as_they_are(value):
    assert csv_safe(value) == value
