"""A password given as a query parameter of the database URL (`?password=`, which libpq accepts
like the one in the user info) never reaches the System page or the sidebar."""

import operator_pages
import pytest
from operator_pages import app_and_service, table
from sqlalchemy.engine import make_url

from cqrs_core.app.ui import md_escape

PASSWORD = "s3cret-in-the-query-string"


@pytest.fixture
def service(db_url, monkeypatch):
    # The test server trusts local connections, so libpq accepts any password.
    url = make_url(db_url).update_query_dict({"password": PASSWORD}).render_as_string(hide_password=False)
    yield from app_and_service(url, db_url, monkeypatch)


def test_system_page_and_sidebar_never_show_a_query_string_password(service):
    at = operator_pages.open_page("pages/system.py")

    url = table(at, "Setting").set_index("Setting").loc["CQRS_DATABASE_URL", "Value"]
    assert "password=***" in url
    shown = [str(v) for frame in at.dataframe for v in frame.value.to_numpy().ravel()]
    shown += [e.value for e in at.markdown] + [e.value for e in at.caption]
    shown += [e.value for e in at.sidebar.markdown] + [e.value for e in at.sidebar.caption]
    shown += [e.help or "" for e in at.sidebar.caption]
    # the connection's whole (redacted) URL, in the tooltip of its caption, markdown-escaped
    assert any(md_escape("password=***") in (e.help or "") for e in at.sidebar.caption)
    assert not [text for text in shown if PASSWORD in text]
