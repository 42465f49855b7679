"""People and roles: password sign-in from secrets, sign-out, what each role is offered, and
commands carry the signed-in person."""
# ruff: noqa: F811  (pytest fixtures imported from page_harness)

import pytest
from page_harness import (  # noqa: F401
    app_env,
    bcrypt_hash,
    open_service,
    rerun,
    run_page,
    shared_db_url,
    sign_in,
    texts,
)
from streamlit.runtime.context import ContextProxy

from cqrs_core.app.auth import authenticate

USERS = {
    "users": {
        "rita": {"password_hash": bcrypt_hash("rita-password"), "role": "researcher"},
        "ann": {"password_hash": bcrypt_hash("ann-password"), "role": "analyst"},
    }
}


def sidebar_text(at) -> str:
    return (
        " ".join(m.value for m in at.sidebar.markdown) + " " + " ".join(c.value for c in at.sidebar.caption)
    )


def test_password_mode_shows_only_the_sign_in_prompt_until_signed_in(shared_db_url, app_env):
    app_env(shared_db_url, auth_mode="password")

    at = run_page(secrets=USERS)

    assert any("Sign in with your user name and password" in i.value for i in at.info)
    assert [t.value for t in at.title] == ["Research Workflow Console"]
    assert "Connection" not in sidebar_text(at)  # nothing about the system before signing in
    assert "Served by" not in sidebar_text(at)
    at.switch_page("pages/workflows.py")  # a link to a page: still only the prompt
    rerun(at)
    assert [t.value for t in at.title] == ["Research Workflow Console"]
    assert not at.dataframe and at.text_input(key="sign_in_name").value == ""

    sign_in(at, "rita", "rita-password")  # and once signed in, the page that was asked for
    assert [t.value for t in at.title] == ["Workflows"]


def test_wrong_password_is_refused_and_sign_in_and_out_work(shared_db_url, app_env):
    app_env(shared_db_url, auth_mode="password")
    at = run_page(secrets=USERS)

    sign_in(at, "rita", "not-her-password")
    assert [e.value for e in at.sidebar.error] == ["Unknown user name or wrong password."]
    sign_in(at, "nobody", "rita-password")
    assert [e.value for e in at.sidebar.error] == ["Unknown user name or wrong password."]

    sign_in(at, "rita", "rita-password")
    assert [t.value for t in at.title] == ["Overview"]
    assert "rita :green-badge[researcher]" in sidebar_text(at)

    at.button(key="sign_out").click()
    rerun(at)
    assert any("Sign in with your user name and password" in i.value for i in at.info)
    assert "rita" not in sidebar_text(at)


def test_missing_users_table_says_how_to_add_users(shared_db_url, app_env):
    app_env(shared_db_url, auth_mode="password")

    at = run_page()

    assert any("No users are configured" in e.value for e in at.sidebar.error)


def test_an_analyst_is_not_offered_the_new_workflow_form(shared_db_url, app_env):
    app_env(shared_db_url, auth_mode="password")
    at = run_page(secrets=USERS)
    sign_in(at, "ann", "ann-password")
    at.switch_page("pages/new_workflow.py")
    rerun(at)

    assert "creating workflows needs the researcher role" in texts(at)
    assert not at.text_input  # no form


def test_commands_carry_the_signed_in_researcher(db_url, app_env):
    app_env(db_url, auth_mode="password", run_projections=True)
    at = run_page(secrets=USERS)
    sign_in(at, "rita", "rita-password")
    at.switch_page("pages/new_workflow.py")
    rerun(at)

    at.text_input(key="new_wf_title").set_value("Rita's study")
    at.text_area(key="new_wf_question").set_value("Who owns this?")
    at.button(key="new_wf_create_button").click()
    rerun(at)  # the click asks; the next run creates (pages/new_workflow.py waits for the table)
    rerun(at)

    assert at.query_params.get("workflow")
    assert "owner rita" in at.markdown[0].value
    assert "Start workflow" in [b.label for b in at.button]  # her own: she may run it


def test_authenticate_checks_the_bcrypt_hash_and_the_role():
    users = {
        "rita": {"password_hash": bcrypt_hash("pw"), "role": "researcher"},
        "eve": {"password_hash": bcrypt_hash("pw"), "role": "superuser"},
        "bad": {"password_hash": "not-a-hash", "role": "admin"},
    }

    assert authenticate(users, "rita", "pw").role == "researcher"
    assert authenticate(users, "rita", "PW") is None
    assert authenticate(users, "eve", "pw") is None  # unknown role
    assert authenticate(users, "bad", "pw") is None  # malformed hash
    assert authenticate(users, "", "") is None


@pytest.fixture
def client_address(monkeypatch):
    """Set the address the app sees a session's connection come from (AppTest has none), and the
    X-Forwarded-For header it carried."""
    address = {"ip": None, "headers": {}}
    monkeypatch.setattr(ContextProxy, "ip_address", property(lambda self: address["ip"]))
    monkeypatch.setattr(ContextProxy, "headers", property(lambda self: address["headers"]))

    def use(ip: str | None, forwarded_for: str | None = None) -> None:
        address["ip"] = ip
        address["headers"] = {} if forwarded_for is None else {"X-Forwarded-For": forwarded_for}

    return use


def test_wrong_passwords_lock_out_that_user_from_that_client_but_not_from_another(
    db_url, app_env, client_address
):
    app_env(db_url, auth_mode="password", sign_in_max_failures="3", sign_in_lockout_seconds="3600")
    client_address("203.0.113.7")
    at = run_page(secrets=USERS)
    for _ in range(3):
        sign_in(at, "rita", "not-her-password")
        assert [e.value for e in at.sidebar.error] == ["Unknown user name or wrong password."]

    sign_in(at, "rita", "rita-password")  # the right password, but from the locked-out client
    assert [e.value for e in at.sidebar.error][0].startswith("Too many failed sign-ins; try again in ")
    assert [t.value for t in at.title] == ["Research Workflow Console"]

    client_address("198.51.100.20")  # the same person at another desk
    sign_in(at, "rita", "rita-password")
    assert [t.value for t in at.title] == ["Overview"]
    assert "rita :green-badge[researcher]" in sidebar_text(at)


def test_guesses_sprayed_from_this_machine_never_keep_out_a_right_password(db_url, app_env, client_address):
    # Every loopback peer is the one client "localhost": anyone on this machine could lock it.
    app_env(db_url, auth_mode="password", sign_in_client_max_failures="3", sign_in_lockout_seconds="3600")
    client_address(None)
    at = run_page(secrets=USERS)
    for i in range(4):
        sign_in(at, f"nobody{i}", "guess")
    assert [e.value for e in at.sidebar.error][0].startswith("Too many failed sign-ins; try again in ")
    sign_in(at, "rita", "not-her-password")
    assert [e.value for e in at.sidebar.error][0].startswith("Too many failed sign-ins; try again in ")

    sign_in(at, "rita", "rita-password")
    assert [t.value for t in at.title] == ["Overview"]


def test_a_forwarded_address_the_server_may_have_believed_unchecked_counts_as_one_client(
    db_url, app_env, client_address, monkeypatch
):
    # A plain `streamlit run` believes X-Forwarded-For from loopback peers: each attempt could name a new client.
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    app_env(db_url, auth_mode="password", sign_in_max_failures="3", sign_in_lockout_seconds="3600")
    at = run_page(secrets=USERS)
    for i in range(3):
        client_address(f"203.0.113.{i + 1}", forwarded_for=f"203.0.113.{i + 1}")
        sign_in(at, "rita", "not-her-password")
        assert [e.value for e in at.sidebar.error] == ["Unknown user name or wrong password."]

    client_address("203.0.113.99", forwarded_for="203.0.113.99")
    sign_in(at, "rita", "rita-password")
    assert [e.value for e in at.sidebar.error][0].startswith("Too many failed sign-ins; try again in ")
    client_address("198.51.100.20")  # no forwarded header: the peer's own address counts
    sign_in(at, "rita", "rita-password")
    assert [t.value for t in at.title] == ["Overview"]


def test_a_user_removed_from_the_secrets_is_signed_out_at_the_next_run(shared_db_url, app_env):
    app_env(shared_db_url, auth_mode="password")
    at = run_page(secrets={"users": dict(USERS["users"])})
    sign_in(at, "rita", "rita-password")
    assert [t.value for t in at.title] == ["Overview"]

    at.secrets["users"] = {"ann": USERS["users"]["ann"]}
    rerun(at)

    assert any("Sign in with your user name and password" in i.value for i in at.info)
    assert "rita" not in sidebar_text(at) and "user" not in at.session_state


def test_a_changed_role_applies_at_the_next_run(shared_db_url, app_env):
    app_env(shared_db_url, auth_mode="password")
    at = run_page(secrets={"users": dict(USERS["users"])})
    sign_in(at, "rita", "rita-password")
    assert "rita :green-badge[researcher]" in sidebar_text(at)

    at.secrets["users"] = {**USERS["users"], "rita": {**USERS["users"]["rita"], "role": "analyst"}}
    at.switch_page("pages/new_workflow.py")
    rerun(at)

    assert "rita :blue-badge[analyst]" in sidebar_text(at)
    assert "creating workflows needs the researcher role" in texts(at)


OPERATORS = {"users": {"olga": {"password_hash": bcrypt_hash("olga-password"), "role": "operator"}}}


@pytest.mark.parametrize("change", ["demoted", "removed"])
def test_a_button_callback_after_the_secrets_changed_acts_with_the_new_rights(db_url, app_env, change):
    # Callbacks run before app.py: the user is checked against the secrets there too.
    app_env(db_url, auth_mode="password")
    at = run_page(secrets={"users": dict(OPERATORS["users"])})
    sign_in(at, "olga", "olga-password")
    at.switch_page("pages/projections.py")
    rerun(at)

    olga = OPERATORS["users"]["olga"]
    at.secrets["users"] = {"olga": {**olga, "role": "analyst"}} if change == "demoted" else {"ann": olga}
    at.button(key="projections.pause.task_summary").click()
    at.run()

    service = open_service(db_url)
    try:
        assert {s.name: s.desired_state for s in service.projections.status()}["task_summary"] == "running"
    finally:
        service.projections.close()
        service.close()
    if change == "removed":
        rerun(at)
        assert any("Sign in with your user name and password" in i.value for i in at.info)


def test_a_misspelt_role_refuses_the_configuration_in_one_line_naming_user_and_role(
    shared_db_url, app_env, caplog
):
    app_env(shared_db_url, auth_mode="password")
    users = {"users": {**USERS["users"], "otto": {"password_hash": bcrypt_hash("pw"), "role": "operater"}}}

    at = run_page(secrets=users)

    line = (
        "secrets.toml: user 'otto' has the role 'operater', which is not one of "
        "analyst, researcher, operator, admin."
    )
    assert [e.value for e in at.error] == [line]
    assert not at.text_input  # no sign-in form that would answer "wrong password"
    assert any(r.levelname == "ERROR" and line in r.getMessage() for r in caplog.records)


AUTH = {
    "auth": {
        "redirect_uri": "http://127.0.0.1:8501/oauth2callback",
        "cookie_secret": "a-long-random-string-for-the-identity-cookie",
        "client_id": "research-console",
        "client_secret": "its-secret",
        "server_metadata_url": "https://sso.example.org/.well-known/openid-configuration",
    }
}


def oidc_page(user: dict | None, secrets: dict | None = AUTH):
    """The app in oidc mode, as st.login's identity cookie would leave st.user."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(__import__("page_harness").APP), default_timeout=30)
    if secrets:
        at.secrets.update(secrets)
    if user is not None:
        at.user = {"is_logged_in": True, **user}
    return rerun(at)


def test_oidc_maps_the_configured_claim_to_our_roles(shared_db_url, app_env):
    app_env(shared_db_url, auth_mode="oidc", oidc_role_claim="console_role")

    at = oidc_page({"email": "otto@example.org", "console_role": "operator", "role": "admin"})

    assert [t.value for t in at.title] == ["Overview"]
    assert "otto@example.org :orange-badge[operator]" in sidebar_text(at).replace("\\", "")


@pytest.mark.parametrize("claim", [None, "superuser", ["admin"], "Admin"])
def test_oidc_refuses_a_missing_or_unmapped_claim_with_no_default_role(shared_db_url, app_env, claim):
    app_env(shared_db_url, auth_mode="oidc", oidc_role_claim="console_role")
    user = {"email": "eve@example.org"} | ({} if claim is None else {"console_role": claim})

    at = oidc_page(user)

    assert [t.value for t in at.title] == ["Research Workflow Console"]
    (error,) = [e.value.replace("\\", "") for e in at.error]  # markdown-escaped: a claim is anyone's text
    assert error.startswith("Your account has no console role: its 'console_role' claim is ")
    assert "Connection" not in sidebar_text(at) and not at.dataframe
    assert [b.label for b in at.button] == ["Sign out"]


def test_oidc_before_sign_in_offers_st_login(shared_db_url, app_env):
    app_env(shared_db_url, auth_mode="oidc")

    at = oidc_page(None)

    assert any("Sign in with your organisation's account" in i.value for i in at.info)
    assert [b.label for b in at.button] == ["Sign in"]


@pytest.mark.parametrize(
    ("secrets", "line"),
    [
        (
            None,
            "secrets.toml has no [auth] section, which CQRS_AUTH_MODE=oidc needs: redirect_uri, "
            "cookie_secret, client_id, client_secret and server_metadata_url (docs/DEPLOY.md).",
        ),
        (
            {"auth": {k: v for k, v in AUTH["auth"].items() if k not in ("cookie_secret", "client_secret")}},
            "secrets.toml: [auth] has no cookie_secret, client_secret, which CQRS_AUTH_MODE=oidc needs "
            "(docs/DEPLOY.md).",
        ),
    ],
)
def test_oidc_without_a_usable_auth_section_says_what_is_missing(
    shared_db_url, app_env, caplog, secrets, line
):
    """Not Streamlit's redacted error on clicking Sign in: one line, and no Sign in button."""
    app_env(shared_db_url, auth_mode="oidc")

    at = oidc_page(None, secrets)

    assert [e.value for e in at.error] == [line]
    assert not at.button
    assert any(r.levelname == "ERROR" and line in r.getMessage() for r in caplog.records)


def test_oidc_reads_the_default_provider_from_its_own_section(shared_db_url, app_env):
    app_env(shared_db_url, auth_mode="oidc")
    top = {k: AUTH["auth"][k] for k in ("redirect_uri", "cookie_secret")}
    provider = {k: v for k, v in AUTH["auth"].items() if k not in top}

    at = oidc_page(None, {"auth": {**top, "default": provider}})

    assert not at.error and [b.label for b in at.button] == ["Sign in"]
