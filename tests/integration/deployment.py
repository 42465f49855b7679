"""The team deployment of docs/DEPLOY.md, as the tests run it: `cqrs-console serve` processes with
one shared environment, Debian's HAProxy running deploy/haproxy.cfg itself in front of them over
TLS, and real Chromium talking to the proxy. Shared by the many-viewers proxy test
(test_proxy_deployment.py) and the scale-out topology test (test_scale_out_topology.py).

The shipped haproxy.cfg is rendered, not copied: its ports and certificate path become the test's,
the privilege drop (`user`, `group`, `chroot`) goes (the test runs HAProxy as its own user), and
for the idle check the client and tunnel timeouts become IDLE_TIMEOUT. Every piece the rendering
replaces must be in the file exactly once, so a changed file fails here rather than being tested
half.

Chromium runs in a thread of its own: Playwright's sync API refuses a thread whose event loop
runs, and the browser journeys of the same session (tests/e2e) keep theirs running in this one.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from server_processes import stop_process_group
from test_serving import free_port
from waiting import wait_until

from cqrs_core.tools.viewer_browser import CHROMIUM_ARGS  # the flags every browser here needs

REPO = Path(__file__).resolve().parents[2]
HAPROXY_CONFIG = REPO / "deploy" / "haproxy.cfg"
CHROMIUM = Path(os.environ.get("CQRS_E2E_CHROMIUM", "/usr/bin/chromium"))
IDLE_TIMEOUT = "3s"  # the proxy's client and tunnel timeouts in the idle check
START_TIMEOUT = 60.0
USER, PASSWORD = "rita", "rita-reads-papers"
SERVED_BY = re.compile(r"^Served by (.+) · pid (\d+)$")


# ---------------------------------------------------------------- what the tests need installed


def required_program(name: str, package: str, switch: str) -> str:
    """The path of `name`, or a skip saying which Debian package provides it (a failure when the
    environment variable `switch` is 1, as .ci/run sets it: CI installs the package)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found:
        return found
    reason = f"No `{name}` found: install Debian's `{package}` package."
    if os.environ.get(switch) == "1":
        pytest.fail(f"{reason} {switch}=1 requires it.", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> Path:
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    if os.environ.get("CQRS_REQUIRE_E2E") == "1":
        pytest.fail(f"No Chromium at {CHROMIUM}; CQRS_REQUIRE_E2E=1 requires it.", pytrace=False)
    pytest.skip(f"No Chromium at {CHROMIUM}")


@pytest.fixture(scope="module")
def haproxy() -> str:
    return required_program("haproxy", "haproxy", "CQRS_REQUIRE_INFRA")


@pytest.fixture(scope="module")
def openssl() -> str:
    return required_program("openssl", "openssl", "CQRS_REQUIRE_INFRA")


# ---------------------------------------------------------------- the proxy's configuration


def render_config(
    template: str, *, http_port: int, https_port: int, pem: Path, app_ports: list[int], idle: bool
) -> str:
    """deploy/haproxy.cfg with this test's ports and certificate; with `idle`, IDLE_TIMEOUT for the
    client and tunnel timeouts."""
    replacements = [
        ("    user haproxy\n", ""),
        ("    group haproxy\n", ""),
        ("    chroot /var/lib/haproxy\n", ""),
        ("    bind :80\n", f"    bind 127.0.0.1:{http_port}\n"),
        (
            "    bind :443 ssl crt /etc/haproxy/certs/console.pem ",
            f"    bind 127.0.0.1:{https_port} ssl crt {pem} ",
        ),
        ("    server app1 127.0.0.1:8501 ", f"    server app1 127.0.0.1:{app_ports[0]} "),
        ("    server app2 127.0.0.1:8502 ", f"    server app2 127.0.0.1:{app_ports[1]} "),
    ]
    if idle:
        replacements += [
            ("    timeout client 30s\n", f"    timeout client {IDLE_TIMEOUT}\n"),
            ("    timeout tunnel 1h\n", f"    timeout tunnel {IDLE_TIMEOUT}\n"),
        ]
    for old, new in replacements:
        assert template.count(old) == 1, (
            f"{HAPROXY_CONFIG} no longer has {old!r} once: update the rendering here"
        )
        template = template.replace(old, new)
    return template


# ---------------------------------------------------------------- the console processes


def write_users(root: Path, role: str) -> None:
    """`root`/.streamlit/secrets.toml with one user, USER, of `role` (what every process reads)."""
    (root / ".streamlit").mkdir(exist_ok=True)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    (root / ".streamlit" / "secrets.toml").write_text(
        f'[users.{USER}]\npassword_hash = "{hashed}"\nrole = "{role}"\n'
    )


def console_env(home: Path, database_url: str, cookie_secret: str) -> dict[str, str]:
    """The environment docs/DEPLOY.md gives every console process (nothing of the developer's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CQRS_", "STREAMLIT_", "FORWARDED_"))}
    env.update(
        HOME=str(home),
        CQRS_DATA_DIR=str(home / "data"),
        CQRS_DATABASE_URL=database_url,
        CQRS_AUTH_MODE="password",
        CQRS_TRUSTED_PROXIES="127.0.0.1",
        STREAMLIT_SERVER_COOKIE_SECRET=cookie_secret,
        STREAMLIT_SERVER_HEADLESS="true",
        STREAMLIT_BROWSER_GATHER_USAGE_STATS="false",
        STREAMLIT_SERVER_FILE_WATCHER_TYPE="none",
    )
    return env


def started(command: list[str], cwd: Path, env: dict[str, str] | None, log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


@dataclass(frozen=True)
class App:
    """One `cqrs-console serve` process on 127.0.0.1:`port`."""

    process: subprocess.Popen
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def app_health(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
            return response.read().decode().strip() == "ok"
    except OSError:
        return False


def serve_apps(stack: ExitStack, root: Path, envs: list[dict[str, str]], logs: Path) -> list[App]:
    """One `cqrs-console serve --server.address 127.0.0.1 --server.port <free port>` per
    environment in `envs` (working directory `root`), each stopped when `stack` closes; returns
    once every one answers its health endpoint."""
    apps = []
    for number, env in enumerate(envs, 1):
        port = free_port()
        command = [sys.executable, "-m", "cqrs_core", "serve", "--server.address", "127.0.0.1"]
        log = logs / f"app{number}.log"
        process = started([*command, "--server.port", str(port)], root, env, log)
        stack.callback(stop_process_group, process)
        apps.append(App(process, port, log))
    for number, app in enumerate(apps, 1):

        def healthy(app: App = app, number: int = number) -> bool:
            if app.process.poll() is not None:
                log = app.log.read_text(errors="replace")
                pytest.fail(
                    f"app {number} exited with {app.process.returncode}:\n{log[-3000:]}", pytrace=False
                )
            return app_health(app.port)

        wait_until(healthy, START_TIMEOUT, f"app process {number} to answer on port {app.port}", interval=0.2)
    return apps


# ---------------------------------------------------------------- HAProxy


def certificate(openssl: str, directory: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1: (HAProxy's PEM: chain then key, the CA file)."""
    key, crt = directory / "key.pem", directory / "crt.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(crt),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    pem = directory / "console.pem"
    pem.write_text(crt.read_text() + key.read_text())
    pem.chmod(0o600)
    return pem, crt


def proxy_health(url: str, cafile: Path) -> bool:
    """True when the proxy answers Streamlit's health endpoint with "ok" (certificate checked)."""
    try:
        context = ssl.create_default_context(cafile=str(cafile))
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2, context=context) as response:
            return response.read().decode().strip() == "ok"
    except OSError:
        return False


@dataclass
class Proxy:
    """HAProxy running the rendered deploy/haproxy.cfg in front of two app processes, over TLS
    with a throwaway certificate (`cafile` trusts it)."""

    haproxy: str
    root: Path
    logs: Path
    app_ports: list[int]
    pem: Path
    cafile: Path
    http_port: int = field(default_factory=free_port)
    https_port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def healthy(self) -> bool:
        return proxy_health(self.url, self.cafile)

    def start(self, idle: bool = False) -> None:
        """Render the configuration (with the short idle timeouts if `idle`), check it with
        `haproxy -c`, run it, and return once the proxy answers."""
        config = self.root / ("haproxy-idle.cfg" if idle else "haproxy.cfg")
        config.write_text(
            render_config(
                HAPROXY_CONFIG.read_text(),
                http_port=self.http_port,
                https_port=self.https_port,
                pem=self.pem,
                app_ports=self.app_ports,
                idle=idle,
            )
        )
        check = subprocess.run([self.haproxy, "-c", "-f", str(config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        log = self.logs / "haproxy.log"
        process = started([self.haproxy, "-f", str(config), "-db"], self.root, None, log)
        self.processes.append(process)

        def up() -> bool:
            if process.poll() is not None:
                text = log.read_text(errors="replace")
                pytest.fail(f"haproxy exited with {process.returncode}:\n{text[-3000:]}", pytrace=False)
            return self.healthy()

        wait_until(up, START_TIMEOUT, f"HAProxy to answer at {self.url}", interval=0.1)

    def restart(self, idle: bool) -> None:
        """Stop HAProxy (SIGTERM: its hard stop closes every connection now) and start it again."""
        stop_process_group(self.processes[-1])
        self.start(idle)

    def stop(self) -> None:
        for process in self.processes:
            stop_process_group(process)


def start_proxy(
    stack: ExitStack, haproxy: str, openssl: str, root: Path, logs: Path, apps: list[App]
) -> Proxy:
    """HAProxy in front of `apps` (two), stopped when `stack` closes."""
    pem, cafile = certificate(openssl, root)
    proxy = Proxy(haproxy, root, logs, [app.port for app in apps], pem, cafile)
    stack.callback(proxy.stop)
    proxy.start()
    return proxy


# ---------------------------------------------------------------- Chromium in a thread of its own


@pytest.fixture(scope="module")
def in_browser(chromium) -> Iterator[Callable[..., Any]]:
    """`in_browser(scenario, *args)`: run `scenario(browser, *args)` on the one thread that owns
    this module's Chromium, and return what it returns (or raise what it raised)."""
    thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chromium")
    owned: dict[str, Any] = {}

    def launch() -> None:
        from playwright.sync_api import expect, sync_playwright

        expect.set_options(timeout=20_000)
        owned["playwright"] = sync_playwright().start()
        owned["browser"] = owned["playwright"].chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS
        )

    def close() -> None:
        if "browser" in owned:
            owned["browser"].close()
        if "playwright" in owned:
            owned["playwright"].stop()

    try:
        thread.submit(launch).result(timeout=120)
        yield lambda scenario, *args: thread.submit(scenario, owned["browser"], *args).result(timeout=240)
    finally:
        thread.submit(close).result(timeout=60)
        thread.shutdown()


# ---------------------------------------------------------------- what a person does in the browser


def new_context(browser: Any, **options: Any) -> Any:
    context = browser.new_context(ignore_https_errors=True, accept_downloads=True, **options)
    context.set_default_timeout(20_000)
    return context


def wait_until_idle(page: Any) -> None:
    """Until the run a click or key press asked for has finished (Streamlit's script state)."""
    from playwright.sync_api import expect

    page.wait_for_timeout(150)
    expect(page.get_by_test_id("stApp")).to_have_attribute(
        "data-test-script-state", "notRunning", timeout=30_000
    )


def served_by(page: Any) -> int:
    """The pid of the app process the sidebar says drew the page (its host is this machine's)."""
    from playwright.sync_api import expect

    caption = page.get_by_test_id("stSidebar").get_by_text(SERVED_BY)
    expect(caption).to_be_visible()
    shown = caption.inner_text().strip()
    match = SERVED_BY.match(shown)
    assert match is not None and match.group(1) == socket.gethostname(), shown
    return int(match.group(2))


def open_and_sign_in(context: Any, url: str, path: str = "") -> Any:
    """A page of `context` at `url`/`path`, signed in; returns the page."""
    from playwright.sync_api import expect

    page = context.new_page()
    page.goto(f"{url}/{path}")
    page.get_by_label("User name").fill(USER, timeout=60_000)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    # As long as the first page: on a loaded machine the run after the sign-in can take that long.
    expect(page.get_by_role("button", name="Sign out")).to_be_visible(timeout=60_000)
    wait_until_idle(page)
    return page


@contextmanager
def evidence_on_failure(pages: list[Any], directory: Path) -> Iterator[None]:
    """Keep a screenshot and the HTML of each page when the block fails."""
    try:
        yield
    except BaseException:
        for number, page in enumerate(pages):
            try:
                page.screenshot(path=str(directory / f"failure-{number}.png"), full_page=True)
                (directory / f"failure-{number}.html").write_text(page.content())
            except Exception:  # the page may be gone; the failure itself matters more
                pass
        print(f"what the pages showed: {directory}")
        raise
