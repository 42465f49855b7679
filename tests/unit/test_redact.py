"""`redact`: database URLs are shown (CLI output, the sidebar, the System page) without any
password, whether in the user info or in the query string, where libpq also takes one."""

import pytest

from cqrs_core.db import redact


@pytest.mark.parametrize("url", [
    "postgresql+psycopg2://alice:s3cret-user@db.example:5432/research",
    "postgresql+psycopg2://alice@db.example/research?password=s3cret-query",
    "postgresql+psycopg2://alice@db.example/research?sslmode=require&sslpassword=s3cret-key",
    "postgresql+psycopg2://alice@db.example/research?PASSWORD=s3cret-upper&password=s3cret-again",
    "postgresql+psycopg2://alice@db.example/research?api_token=s3cret-token&client_secret=s3cret-client",
    "postgresql+psycopg2://alice@db.example/research?pass%77ord=s3cret-encoded",
])
def test_no_password_survives_redaction(url):
    assert "s3cret" not in redact(url)


def test_other_parameters_and_the_place_are_kept_and_secrets_show_as_stars():
    shown = redact("postgresql+psycopg2://alice:pw@/research?host=/run/pg&port=5433&password=pw2&sslmode=require")

    assert shown.startswith("postgresql+psycopg2://alice:***@/research?")
    assert "password=***" in shown and "sslmode=require" in shown and "port=5433" in shown and "pw" not in shown


def test_a_url_that_does_not_parse_is_not_echoed():
    assert redact("not a url with s3cret") == "<unparseable url>"
