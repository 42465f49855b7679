"""Sign-in through OpenID Connect end to end (issue 15, item 13): `cqrs-console serve` with
CQRS_AUTH_MODE=oidc, Streamlit's own st.login, and a real provider, panva's `oidc-provider` from
the npm registry (tests/oidc: package.json, package-lock.json, provider.mjs), in real Chromium.

The provider is the package's own, configured by the fixture: one confidential client whose
redirect_uri is the console's /oauth2callback, accounts with their claims, the role claim
released for the scope `console`. Its development login form accepts any password; the login
name picks the account. Everything is plain http on 127.0.0.1, and the browser is kept from
fetching anything else (the provider's pages ask for a web font).

Without Chromium, node or npm the tests are skipped, unless CQRS_REQUIRE_E2E=1 (CI) says they
must run: then they fail, naming what is missing. The provider's packages are installed by
`npm ci` into tests/oidc/node_modules the first time (the npm registry must be reachable)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port, fresh_database
from playwright.sync_api import Page, expect
from server_processes import stop_process_group
from streamlit_screen import button, wait_until_idle
from waiting import wait_until

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
OIDC_DIR = REPO / "tests" / "oidc"
START_TIMEOUT = 60.0
NPM_CI_TIMEOUT = 300.0
CLIENT_ID = "research-console"
ROLE_CLAIM = "role"
ROLE_SCOPE = "console"
# Login name -> the claims the provider holds for that account.
ACCOUNTS = {
    "otto": {"email": "otto@example.org", "name": "Otto Operator", ROLE_CLAIM: "operator"},
    "sue": {"email": "sue@example.org", "name": "Sue Superuser", ROLE_CLAIM: "superuser"},
    "nora": {"email": "nora@example.org", "name": "Nora No-role"},
}
REFUSAL = (
    "Your account has no console role: its 'role' claim is {shown}, and the console accepts only "
    "analyst, researcher, operator, admin. Ask an administrator to set it, then sign in again."
)
SIGN_IN_PROMPT = "Sign in with your organisation's account to continue."


def require(found: bool, reason: str) -> None:
    """Skip without `found`, or fail under CQRS_REQUIRE_E2E=1 (CI), naming `reason`."""
    if found:
        return
    if os.environ.get("CQRS_REQUIRE_E2E") == "1":
        pytest.fail(f"{reason} CQRS_REQUIRE_E2E=1 requires the OpenID Connect journeys.", pytrace=False)
    pytest.skip(reason)


def installed_as_locked(node_dir: Path) -> bool:
    """node_modules holds the oidc-provider version package-lock.json names."""
    locked = json.loads((node_dir / "package-lock.json").read_text())["packages"]
    try:
        installed = json.loads((node_dir / "node_modules" / "oidc-provider" / "package.json").read_text())
    except (OSError, ValueError):
        return False
    return installed.get("version") == locked["node_modules/oidc-provider"]["version"]


def npm_ci(node_dir: Path) -> None:
    """`npm ci` into node_dir/node_modules unless the locked provider is there already; one
    process at a time (a lock file), so parallel test sessions do not install over each other."""
    with (node_dir / ".npm-ci.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed_as_locked(node_dir):
            return
        result = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=node_dir,
            capture_output=True,
            text=True,
            timeout=NPM_CI_TIMEOUT,
        )
        if result.returncode != 0:
            pytest.fail(
                f"`npm ci` in {node_dir} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}",
                pytrace=False,
            )


@dataclass
class Provider:
    issuer: str
    client_secret: str
    log_path: Path

    @property
    def metadata_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def started(command: list[str], cwd: Path, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_answering(process: subprocess.Popen, url: str, what: str, log_path: Path) -> None:
    def up() -> bool:
        if process.poll() is not None:
            log = log_path.read_text(errors="replace")[-3000:]
            pytest.fail(f"{what} exited with {process.returncode}:\n{log}", pytrace=False)
        return answers(url)

    wait_until(up, START_TIMEOUT, f"{what} to answer at {url}", interval=0.2)


@dataclass
class OidcConsole:
    url: str
    provider: Provider
    log_path: Path


@pytest.fixture(scope="module")
def provider_package(chromium_path) -> Path:
    """tests/oidc with the locked provider installed (npm ci the first time)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    require(
        node is not None and npm is not None,
        "No node or npm on PATH: install Debian's nodejs and npm packages to run the OpenID Connect "
        "journeys against a real provider (tests/oidc).",
    )
    npm_ci(OIDC_DIR)
    return OIDC_DIR


def secrets_toml(provider: Provider, redirect_uri: str) -> str:
    """The [auth] section as docs/DEPLOY.md has it: the provider's discovery document, this
    client, and the scope that releases the role claim. The provider supports the prompts login
    and consent only, not Streamlit's default select_account: ask for login instead."""
    return (
        "[auth]\n"
        f'redirect_uri = "{redirect_uri}"\n'
        f'cookie_secret = "{uuid.uuid4().hex}{uuid.uuid4().hex}"\n'
        f'client_id = "{CLIENT_ID}"\n'
        f'client_secret = "{provider.client_secret}"\n'
        f'server_metadata_url = "{provider.metadata_url}"\n'
        f'client_kwargs = {{ scope = "openid email profile {ROLE_SCOPE}", prompt = "login" }}\n'
    )


@pytest.fixture(scope="module")
def oidc_console(provider_package, pg_admin_url, template_db, tmp_path_factory) -> Iterator[OidcConsole]:
    """The provider (node provider.mjs) and `cqrs-console serve` with CQRS_AUTH_MODE=oidc on a
    fresh database, served from a directory whose .streamlit/secrets.toml has the [auth] section.
    Both are stopped afterwards, whatever happened."""
    root = tmp_path_factory.mktemp("oidc")
    app_port = free_port()
    provider_port = free_port()
    while provider_port == app_port:
        provider_port = free_port()
    redirect_uri = f"http://127.0.0.1:{app_port}/oauth2callback"
    provider = Provider(f"http://127.0.0.1:{provider_port}", uuid.uuid4().hex, root / "provider.log")
    (root / "provider.json").write_text(
        json.dumps(
            {
                "port": provider_port,
                "client_id": CLIENT_ID,
                "client_secret": provider.client_secret,
                "redirect_uri": redirect_uri,
                "role_claim": ROLE_CLAIM,
                "role_scope": ROLE_SCOPE,
                "accounts": ACCOUNTS,
            }
        )
    )
    (root / ".streamlit").mkdir()
    shutil.copy(REPO / ".streamlit" / "config.toml", root / ".streamlit" / "config.toml")
    (root / ".streamlit" / "secrets.toml").write_text(secrets_toml(provider, redirect_uri))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CQRS_", "STREAMLIT_", "NODE_"))}
    with ExitStack() as stack:
        node = started(
            ["node", str(provider_package / "provider.mjs"), str(root / "provider.json")],
            provider_package,
            env,
            provider.log_path,
        )
        stack.callback(stop_process_group, node)
        wait_answering(node, provider.metadata_url, "the OpenID Connect provider", provider.log_path)

        database_url = stack.enter_context(fresh_database(pg_admin_url, template_db))
        console_env = env | {
            "HOME": str(root),
            "CQRS_DATABASE_URL": database_url,
            "CQRS_DATA_DIR": str(root / "data"),
            "CQRS_AUTH_MODE": "oidc",
            "CQRS_OIDC_ROLE_CLAIM": ROLE_CLAIM,
            "CQRS_RUN_PROJECTIONS": "false",
            "STREAMLIT_SERVER_HEADLESS": "true",
            "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
        }
        command = [sys.executable, "-m", "cqrs_core", "serve", "--server.address", "127.0.0.1"]
        console_log = root / "console.log"
        app = started([*command, "--server.port", str(app_port)], root, console_env, console_log)
        stack.callback(stop_process_group, app)
        url = f"http://127.0.0.1:{app_port}"
        wait_answering(app, f"{url}/_stcore/health", "cqrs-console serve", console_log)
        yield OidcConsole(url, provider, console_log)


def local_only(page: Page) -> Page:
    """Nothing but 127.0.0.1: the provider's pages ask for a web font from the internet."""
    page.route(re.compile(r"^(?!http://127\.0\.0\.1[:/])"), lambda route: route.abort())
    return page


def sign_in_at_the_provider(page: Page, console: OidcConsole, login: str) -> None:
    """From the console's sign-in page through the provider's login and consent forms, back to
    the console."""
    page.goto(console.url)
    expect(page.get_by_text(SIGN_IN_PROMPT)).to_be_visible(timeout=60_000)
    button(page, "Sign in").click()
    page.wait_for_url(f"{console.provider.issuer}/interaction/**", timeout=30_000)
    page.get_by_placeholder("Enter any login").fill(login)
    page.get_by_placeholder("and password").fill("any password will do")
    button(page, "Sign-in").click()
    button(page, "Continue").click()  # consent to the scopes asked for, the role's included
    page.wait_for_url(f"{console.url}/**", timeout=30_000)


def signed_in_cookies(page: Page) -> list[str]:
    """The names of st.login's identity cookies the browser holds for the console."""
    return [c["name"] for c in page.context.cookies() if c["name"].startswith("_streamlit_user")]


def sign_out_at_the_provider(page: Page, console: OidcConsole) -> None:
    """st.logout: the provider asks whether to end its session too, then sends the browser back."""
    page.wait_for_url(f"{console.provider.issuer}/session/end**", timeout=30_000)
    button(page, "Yes, sign me out").click()
    page.wait_for_url(f"{console.url}/**", timeout=30_000)
    expect(page.get_by_text(SIGN_IN_PROMPT)).to_be_visible(timeout=30_000)
    assert signed_in_cookies(page) == []


def test_an_operator_signs_in_at_the_provider_works_as_an_operator_and_signs_out(oidc_console, new_page):
    page = local_only(new_page())

    sign_in_at_the_provider(page, oidc_console, "otto")

    expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible(timeout=60_000)
    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar.get_by_text("otto@example.org")).to_be_visible()
    expect(sidebar.get_by_text("operator", exact=True)).to_be_visible()
    assert signed_in_cookies(page)
    # Another page of the console, in a new Streamlit session (a typed URL): still otto.
    page.goto(f"{oidc_console.url}/projections")
    expect(page.get_by_role("heading", name="Projections", exact=True)).to_be_visible(timeout=30_000)
    expect(sidebar.get_by_text("operator", exact=True)).to_be_visible()
    wait_until_idle(page)

    button(sidebar, "Sign out").click()

    sign_out_at_the_provider(page, oidc_console)
    expect(page.locator(".st-key-console_nav")).to_have_count(0)
    page.goto(f"{oidc_console.url}/projections")  # signed out stays signed out
    expect(page.get_by_text(SIGN_IN_PROMPT)).to_be_visible(timeout=30_000)
    expect(page.get_by_role("heading", name="Projections", exact=True)).to_have_count(0)


@pytest.mark.parametrize(("login", "shown"), [("sue", "'superuser'"), ("nora", "missing")])
def test_an_account_without_one_of_our_roles_is_refused_in_one_sentence(oidc_console, new_page, login, shown):
    page = local_only(new_page())

    sign_in_at_the_provider(page, oidc_console, login)

    refusal = REFUSAL.format(shown=shown)
    expect(page.get_by_text(refusal, exact=True)).to_be_visible(timeout=60_000)
    expect(page.get_by_role("heading", name="Research Workflow Console", exact=True)).to_be_visible()
    expect(page.locator(".st-key-console_nav")).to_have_count(0)
    expect(page.get_by_text("Signed in", exact=True)).to_have_count(0)
    # Not let in by a typed URL either: the page is not run.
    page.goto(f"{oidc_console.url}/workflows")
    expect(page.get_by_text(refusal, exact=True)).to_be_visible(timeout=30_000)
    expect(page.get_by_role("heading", name="Workflows", exact=True)).to_have_count(0)
    wait_until_idle(page)
    email = ACCOUNTS[login]["email"]
    logged = f"refused an OpenID Connect sign-in of {email!r}: claim 'role' is {shown}"
    assert logged in oidc_console.log_path.read_text(errors="replace")

    button(page, "Sign out").click()

    sign_out_at_the_provider(page, oidc_console)
