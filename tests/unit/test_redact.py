"""`redact`: database URLs are shown (CLI output, the sidebar, the System page) without any
password, whether in the user info or in the query string, where libpq also takes one."""

import pytest

from cqrs_core.infra.db import redact


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg2://alice:s3cret-user@db.example:5432/research",
        "postgresql+psycopg2://alice@db.example/research?password=s3cret-query",
        "postgresql+psycopg2://alice@db.example/research?sslmode=require&sslpassword=s3cret-key",
        "postgresql+psycopg2://alice@db.example/research?PASSWORD=s3cret-upper&password=s3cret-again",
        "postgresql+psycopg2://alice@db.example/research?api_token=s3cret-token&client_secret=s3cret-client",
        "postgresql+psycopg2://alice@db.example/research?pass%77ord=s3cret-encoded",
        "postgresql+psycopg2://alice@db.example/research?pass%2577ord=s3cret-encoded-twice",
        "postgresql+psycopg2://alice@db.example/research?Password=s3cret-mixed-case",
        "postgresql+psycopg2://alice@db.example/research?pwd=s3cret-pwd&passwd=s3cret-passwd&pass=s3cret-pass",
        # psycopg2 takes a libpq connection string in `dsn`, with its own `password=` (a working URL)
        "postgresql+psycopg2://postgres@/research?dsn=password%3DHunter2-s3cret&host=%2Ftmp%2Fpg&port=5432",
        "postgresql+psycopg2://alice@db.example/research?dsn=host%3Dh%20password%3Ds3cret-dsn",
        "postgresql+psycopg2://alice@db.example/research?DSN=PASSWORD%3Ds3cret-dsn-upper",
        "postgresql+psycopg2://alice@db.example/research?dsn=postgresql%3A%2F%2Fa%3As3cret-nested%40h%2Fdb",
        # `name=value` pairs inside another parameter's value (decoded first), and after a `#`
        "postgresql+psycopg2://alice@db.example/research?options=-c%20password%3Ds3cret-options",
        "postgresql+psycopg2://alice@db.example/research?options=-c%2520sslpassword%253Ds3cret-options-twice",
        "postgresql+psycopg2://alice@db.example/research?options=-c%20password%20%3D%20%27s3cret%20quoted%27",
        "postgresql+psycopg2://alice@db.example/research?a=1#password=s3cret-fragment",
        "postgresql+psycopg2://alice@db.example/research#password=s3cret-fragment",
        "postgresql+psycopg2://alice@db.example/research?target=postgresql://a:s3cret-nested@h/db",
        # an unencoded `@` in the password: SQLAlchemy ends the password at the first one
        "postgresql+psycopg2://postgres:Tr0ub4dor@Hunter2-s3cret@db.example:5432/research",
        "postgresql+psycopg2://alice:a@b@s3cret@db.example/research?application_name=me@home",
        "postgresql+psycopg2://alice:a@b/s3cret@db.example/research",
        "postgresql+psycopg2://alice:a?b@s3cret@db.example/research",
        # an encoded `:` in the user name: what follows it reads as a password
        "postgresql+psycopg2://alice%3As3cret-colon@db.example/research",
    ],
)
def test_no_password_survives_redaction(url):
    shown = redact(url)
    assert "s3cret" not in shown and "Tr0ub4dor" not in shown and "Hunter2" not in shown


def test_an_unencoded_at_sign_in_the_password_is_masked_up_to_the_last_one():
    assert (
        redact("postgresql+psycopg2://postgres:Tr0ub4dor@Hunter2-s3cret@db.example:5432/research")
        == "postgresql+psycopg2://postgres:***@db.example:5432/research"
    )
    # an `@` in the query string is not part of the password
    assert (
        redact("postgresql+psycopg2://alice:a@b@db.example/research?application_name=me@home")
        == "postgresql+psycopg2://alice:***@db.example/research?application_name=me%40home"
    )


def test_a_dsn_parameter_is_masked_whole_and_pairs_inside_other_values_keep_their_names():
    assert (
        redact("postgresql+psycopg2://postgres@/research?dsn=password%3DHunter2-s3cret&port=5432")
        == "postgresql+psycopg2://postgres@/research?dsn=***&port=5432"
    )
    assert (
        redact("postgresql+psycopg2://alice@h/research?options=-c%20password%3Ds3cret%20-c%20work_mem%3D64MB")
        == "postgresql+psycopg2://alice@h/research?options=-c+password%3D***+-c+work_mem%3D64MB"
    )


def test_harmless_parameters_named_like_passwords_stay_readable():
    shown = redact(
        "postgresql+psycopg2://alice@h/research?passfile=/home/alice/.pgpass&application_name=console"
    )
    assert "passfile=%2Fhome%2Falice%2F.pgpass" in shown and "application_name=console" in shown


def test_other_parameters_and_the_place_are_kept_and_secrets_show_as_stars():
    shown = redact(
        "postgresql+psycopg2://alice:pw@/research?host=/run/pg&port=5433&password=pw2&sslmode=require"
    )

    assert shown.startswith("postgresql+psycopg2://alice:***@/research?")
    assert (
        "password=***" in shown and "sslmode=require" in shown and "port=5433" in shown and "pw" not in shown
    )


def test_a_url_that_does_not_parse_is_not_echoed():
    assert redact("not a url with s3cret") == "<unparseable url>"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # webhooks carry their token in the path (Slack, Teams, Discord) or the query (Azure's `sig`)
        ("https://hooks.slack.com/services/T0001/B0001/s3cretToken", "https://hooks.slack.com/***"),
        ("https://example.com:8443/hook/abc?sig=s3cret&api-version=1", "https://example.com:8443/***?***"),
        ("https://user:s3cret@example.com/h", "https://***@example.com/***"),
        ("HTTPS://Example.com/a#s3cret-fragment", "https://example.com/***"),
        ("http://127.0.0.1:8080/hook/s3cret?token=s3cret", "http://127.0.0.1:8080/***?***"),
        ("http://[::1]:8080/s3cret", "http://[::1]:8080/***"),
        # an endpoint id in the host (a label with a digit, in front of the domain) is masked too
        ("https://eo12s3cret34.m.pipedream.net", "https://***.m.pipedream.net"),
        ("https://hooks.example.com/", "https://hooks.example.com/"),
    ],
)
def test_a_webhook_url_shows_its_service_but_neither_path_nor_query(url, shown):
    assert redact(url) == shown


def test_a_webhook_url_that_does_not_parse_is_not_echoed():
    assert redact("https://[::1/s3cret") == "<unparseable url>"
