"""Workflows page, search: every hit says why it matched (a tag-only hit too), the reasons do not
repeat the table's hits, and a search of only common words says so."""
# ruff: noqa: F811  (pytest fixtures imported from page_harness)

import pytest
from page_harness import (  # noqa: F401
    app_env,
    create_workflow,
    rerun,
    run_page,
    seed,
    shared_db_url,
)
from streamlit.testing.v1 import AppTest

from cqrs_core.app.ui import md_escape
from cqrs_core.read.handlers.workflows import STOP_WORDS_ONLY

PAGE = "pages/workflows.py"


def plant(svc) -> None:
    create_workflow(
        svc, title="Sleep and memory", question="Does sleep consolidate memory?", tags=["cognition"]
    )
    # found only by its tag: neither its title nor its question says "mindfulness"
    create_workflow(
        svc, title="Coffee and focus", question="Does caffeine improve focus?", tags=["mindfulness", "work"]
    )
    create_workflow(svc, title="Zebra stripes", question="Why do zebras have stripes?")


@pytest.fixture(scope="module")
def searchable(shared_db_url):
    seed(shared_db_url, plant)
    return shared_db_url


def search(url: str, app_env, text: str) -> AppTest:
    app_env(url)
    at = run_page(PAGE)
    at.text_input(key="wf_search").set_value(text)
    return rerun(at)


def hits_html(at: AppTest) -> str:
    [hits] = [h.value for h in at.html if "wf-search-hits" in h.value]
    return hits


def test_a_hit_found_by_a_tag_alone_shows_the_tag_highlighted(searchable, app_env):
    at = search(searchable, app_env, "mindfulness")

    assert list(at.dataframe(key="wf_table").value["title"]) == ["Coffee and focus"]
    hits = hits_html(at)
    assert "<mark>mindfulness</mark>, work" in hits
    assert "Coffee and focus" not in hits  # nothing matched there: not shown as a reason


def test_the_reasons_are_numbered_like_the_table_and_do_not_repeat_its_titles(searchable, app_env):
    at = search(searchable, app_env, "sleep or mindfulness")

    table = at.dataframe(key="wf_table").value
    assert list(table["hit"]) == [1, 2]
    hits = hits_html(at)
    assert hits.count("<li") == 2 and 'value="1"' in hits and 'value="2"' in hits
    # the matched words only: no title printed on its own next to the table's Title column
    assert "<b>Sleep and memory</b>" not in hits and "<b>Coffee and focus</b>" not in hits
    assert hits.lower().count("<mark>sleep</mark>") >= 2 and "<mark>mindfulness</mark>" in hits


def test_a_search_of_only_common_words_says_they_are_ignored(searchable, app_env):
    at = search(searchable, app_env, "the")

    assert [e.value for e in at.error] == [md_escape(STOP_WORDS_ONLY)]
    assert not any("fewer words" in i.value for i in at.info)
    assert len(at.dataframe) == 0  # no empty table under the message
