"""Every table the console draws shows a cell with no value as "—" (`ui.MISSING`), not
Streamlit's grey "None", which reads as a word to people who are not programmers."""

import ast
from pathlib import Path

from cqrs_core.app import ui

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [
    ROOT / "app.py",
    *sorted((ROOT / "pages").glob("*.py")),
    *sorted((ROOT / "cqrs_core" / "app").rglob("*.py")),
]


def table_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("dataframe", "data_editor")
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "st"
            ):
                calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", node))
    return calls


def test_the_placeholder_is_a_dash():
    assert ui.MISSING == "—"


def test_every_read_only_table_passes_the_placeholder():
    calls = [(where, call) for where, call in table_calls() if call.func.attr == "dataframe"]
    assert len(calls) >= 25  # the walk finds the tables (28 when this was written)
    missing = [
        where
        for where, call in calls
        if not any(k.arg == "placeholder" and ast.unparse(k.value) == "ui.MISSING" for k in call.keywords)
    ]
    assert missing == []
