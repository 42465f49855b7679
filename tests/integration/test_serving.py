"""Where the console listens (issue 12, item 2): with sign-in off (`CQRS_AUTH_MODE=none`) the
real launcher, `cqrs-console serve`, refuses every way of asking for a non-loopback address
before it listens, listens on 127.0.0.1 only when no address is given, and makes Streamlit
refuse a WebSocket whose Host is not a localhost name; with sign-in on it serves any address.
The Makefile passes a port only when PORT is given."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from server_processes import stop_process_group
from streamlit import config as streamlit_config
from streamlit.testing.v1 import AppTest
from waiting import wait_until

from cqrs_core.cli import serve
from cqrs_core.infra.config import get_settings

REPO = Path(__file__).resolve().parents[2]
UNREACHABLE = "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere"
START_TIMEOUT = 60.0
REFUSAL = "Sign-in is off (CQRS_AUTH_MODE=none)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No CQRS_ or STREAMLIT_ setting of the developer's; a data dir of the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CQRS_", "STREAMLIT_"))}
    env.update(
        CQRS_DATABASE_URL=UNREACHABLE,
        CQRS_DATA_DIR=str(tmp_path / "data"),
        STREAMLIT_SERVER_HEADLESS="true",
        STREAMLIT_BROWSER_GATHER_USAGE_STATS="false",
        STREAMLIT_SERVER_FILE_WATCHER_TYPE="none",
    )
    env.update(extra)
    return env


def launch(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cqrs_core", "serve", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def stop(process: subprocess.Popen) -> None:
    stop_process_group(process)


@contextmanager
def running(args: list[str], env: dict[str, str], cwd: Path, port: int) -> Iterator[subprocess.Popen]:
    """The launcher, once http://127.0.0.1:port/_stcore/health says ok (bounded wait); stopped after."""
    process = launch(args, env, cwd)
    try:
        wait_healthy(process, port)
        yield process
    finally:
        stop(process)


def wait_healthy(process: subprocess.Popen, port: int) -> None:
    """Until http://127.0.0.1:port/_stcore/health says ok (bounded); fails if the process exits."""

    def healthy() -> bool:
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the server exited with {process.returncode}:\n{out}\n{err}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
                return response.read().decode().strip() == "ok"
        except OSError:
            return False

    wait_until(healthy, START_TIMEOUT, f"the server to answer on port {port}", interval=0.2)


def listening_addresses(pid: int, port: int) -> set[str]:
    found = set()
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        for conn in proc.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
                found.add(conn.laddr.ip)
    return found


def websocket_status(port: int, host_header: str) -> str:
    """The status line Streamlit answers to a WebSocket handshake on /_stcore/stream with this Host."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            (
                f"GET /_stcore/stream HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        return s.recv(200).split(b"\r\n", 1)[0].decode()


def non_loopback_ip() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "how", ["flag", "flag ::", "env", "env LAN", "config.toml", "allowedHosts", "CORS off", "CORS origins"]
)
def test_sign_in_off_refuses_every_non_loopback_address_with_one_line_before_listening(tmp_path, how):
    port = free_port()
    env = launcher_env(tmp_path)
    args = ["--server.port", str(port)]
    if how == "flag":
        args += ["--server.address", "0.0.0.0"]
    elif how == "flag ::":
        args += ["--server.address", "::"]
    elif how == "env":
        env["STREAMLIT_SERVER_ADDRESS"] = "0.0.0.0"
    elif how == "env LAN":
        env["STREAMLIT_SERVER_ADDRESS"] = non_loopback_ip() or "192.0.2.10"
    elif how == "config.toml":
        (tmp_path / ".streamlit").mkdir()
        (tmp_path / ".streamlit" / "config.toml").write_text('[server]\naddress = "0.0.0.0"\n')
    elif how == "allowedHosts":
        env["STREAMLIT_SERVER_ALLOWED_HOSTS"] = "*"
    elif how == "CORS off":  # any web site could open the WebSocket (the admin's session)
        args += ["--server.enableCORS", "false"]
    elif how == "CORS origins":
        (tmp_path / ".streamlit").mkdir()
        (tmp_path / ".streamlit" / "config.toml").write_text(
            '[server]\ncorsAllowedOrigins = ["https://evil.example"]\n'
        )
    process = launch(args, env, tmp_path)
    try:
        out, err = process.communicate(timeout=START_TIMEOUT)
    finally:
        stop(process)
    lines = [line for line in err.splitlines() if line.strip()]
    assert process.returncode == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith(f"cqrs-console: {REFUSAL}"), err
    assert "CQRS_AUTH_MODE=password" in lines[0]
    assert "You can now view" not in out and "Uvicorn server started" not in out + err
    if how == "config.toml":
        assert str(tmp_path / ".streamlit" / "config.toml") in lines[0]


# ---------------------------------------------------------------- what it does serve


def test_sign_in_off_listens_on_loopback_only_on_the_config_toml_port_and_refuses_foreign_hosts(tmp_path):
    port = free_port()
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "config.toml").write_text(f"[server]\nport = {port}\n")
    with running([], launcher_env(tmp_path), tmp_path, port) as process:
        assert listening_addresses(process.pid, port) == {"127.0.0.1"}
        other = non_loopback_ip()
        if other is not None:
            with pytest.raises(OSError), socket.create_connection((other, port), timeout=5):
                pass
        # DNS rebinding: a page served under another name may not open the app's WebSocket.
        assert " 403 " in websocket_status(port, f"rebind.attacker.example:{port}")
        assert " 403 " in websocket_status(port, f"localhost.attacker.example:{port}")
        for local in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost"):
            assert " 101 " in websocket_status(port, local), local


def test_sign_in_on_serves_a_non_loopback_address_on_the_streamlit_server_port_variable(tmp_path):
    port = free_port()
    env = launcher_env(tmp_path, CQRS_AUTH_MODE="password", STREAMLIT_SERVER_PORT=str(port))
    with running(["--server.address", "0.0.0.0"], env, tmp_path, port) as process:
        assert listening_addresses(process.pid, port) == {"0.0.0.0"}
        # No host restriction is imposed when people must sign in.
        assert " 101 " in websocket_status(port, f"console.example.org:{port}")


@pytest.mark.parametrize("address", ["localhost", "localhost."])
def test_localhost_is_bound_as_127_0_0_1_without_asking_the_resolver(tmp_path, address):
    port = free_port()
    with running(
        ["--server.port", str(port), "--server.address", address], launcher_env(tmp_path), tmp_path, port
    ) as process:
        assert listening_addresses(process.pid, port) == {"127.0.0.1"}
        stop(process)
        out, err = process.communicate()
    assert f"started on 127.0.0.1:{port}" in out + err


def one_line_refusal(args: list[str], env: dict[str, str], cwd: Path) -> str:
    process = launch(args, env, cwd)
    try:
        out, err = process.communicate(timeout=START_TIMEOUT)
    finally:
        stop(process)
    lines = [line for line in err.splitlines() if line.strip()]
    assert process.returncode == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("cqrs-console: "), err
    assert "Uvicorn server started" not in out + err
    return lines[0]


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_refusal(["--server.port", str(port)], launcher_env(tmp_path), tmp_path)
    assert "in use" in line and "--server.port" in line


def test_an_address_this_machine_does_not_have_is_one_line_and_exit_2(tmp_path):
    env = launcher_env(tmp_path, CQRS_AUTH_MODE="password")
    for args in (
        ["--server.port", str(free_port()), "--server.address", "192.0.2.10"],
        ["--server.address", "no-such-host.invalid"],
    ):  # also without a port: at Streamlit's own bind
        line = one_line_refusal(args, env, tmp_path)
        assert line.startswith("cqrs-console: Cannot listen on ") and "--server.address" in line, line


def test_sign_in_on_still_allows_cors_settings(tmp_path):
    port = free_port()
    env = launcher_env(tmp_path, CQRS_AUTH_MODE="password")
    with running(
        ["--server.port", str(port), "--server.address", "127.0.0.1", "--server.enableCORS", "false"],
        env,
        tmp_path,
        port,
    ):
        pass


# ---------------------------------------------------------------- make run


def make_dry_run(target: str, *options: str, **variables: str) -> str:
    """What `make -n target` would run (nothing is run)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "MAKEFLAGS", "MAKELEVEL")}
    result = subprocess.run(
        [make, "-n", *options, target, *(f"{k}={v}" for k, v in variables.items())],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


@pytest.fixture
def installed_venv(tmp_path):
    """A VENV whose install stamps are newer than the locks and pyproject.toml."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for stamp in (".installed-run", ".installed-dev"):
        (venv / stamp).touch()
    return str(venv)


def test_make_run_serves_through_the_launcher_with_a_port_only_when_port_is_given(installed_venv):
    default = make_dry_run("run", VENV=installed_venv)
    assert "cqrs-console migrate" in default and "cqrs-console serve" in default
    assert "--server.port" not in default and "streamlit run" not in default
    assert "cqrs-console serve --server.port 8600" in make_dry_run("run", VENV=installed_venv, PORT="8600")


@pytest.mark.parametrize(
    ("target", "lock", "other"), [("run", "run.lock", "dev.lock"), ("test", "dev.lock", "run.lock")]
)
def test_make_installs_from_its_own_hash_checked_lock_when_the_lock_or_pyproject_changes(
    installed_venv, target, lock, other
):
    assert "pip install" not in make_dry_run(target, VENV=installed_venv)
    for changed in (f"requirements/{lock}", "pyproject.toml"):
        commands = make_dry_run(target, "-W", changed, VENV=installed_venv)
        assert f"pip install --require-hashes -r requirements/{lock}" in commands, commands
        assert "pip install --no-deps -e ." in commands and other not in commands
    assert "pip install" not in make_dry_run(target, "-W", f"requirements/{other}", VENV=installed_venv)


def test_make_test_leaves_the_slow_tests_to_ci(installed_venv):
    assert '-m "not slow"' in make_dry_run("test", VENV=installed_venv)


def read_lock(name: str) -> dict[str, tuple[str, str | None, int]]:
    """requirements/<name>: {normalised name: (version, marker or None, number of hashes)}."""
    from packaging.utils import canonicalize_name

    pins: dict[str, tuple[str, str | None, int]] = {}
    current = None
    for line in (REPO / "requirements" / name).read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            requirement, _, marker = line.rstrip(" \\").partition(";")
            package, _, version = requirement.strip().partition("==")
            current = canonicalize_name(package)
            pins[current] = (version, marker.strip() or None, 0)
        elif line.strip().startswith("--hash=sha256:") and current is not None:
            version, marker, hashes = pins[current]
            pins[current] = (version, marker, hashes + 1)
    return pins


def test_the_locks_pin_every_dependency_with_hashes_and_agree_with_each_other_and_this_venv():
    import tomllib
    from importlib.metadata import PackageNotFoundError, version

    from packaging.markers import Marker
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    run, dev = read_lock("run.lock"), read_lock("dev.lock")
    for requirement in map(Requirement, project["dependencies"]):
        assert canonicalize_name(requirement.name) in run, requirement
    for requirement in map(Requirement, project["dependencies"] + project["optional-dependencies"]["dev"]):
        assert canonicalize_name(requirement.name) in dev, requirement
    for package, (pinned, marker, hashes) in {**run, **dev}.items():
        assert pinned and hashes >= 1, package
        if package in run and package in dev:
            assert run[package][0] == dev[package][0], package
        if marker is None or Marker(marker).evaluate():
            try:
                assert version(package) == pinned, (
                    f"{package} {version(package)} is installed, the lock says {pinned}"
                )
            except PackageNotFoundError:
                assert package not in run, f"{package} is locked but not installed"


# ---------------------------------------------------------------- the check inside app.py


@pytest.fixture
def app_settings(monkeypatch):
    for name in [k for k in os.environ if k.startswith("CQRS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CQRS_DATABASE_URL", UNREACHABLE)
    monkeypatch.setenv("CQRS_RUN_PROJECTIONS", "false")
    get_settings.cache_clear()
    saved = {
        key: (streamlit_config.get_option(key), streamlit_config.get_where_defined(key))
        for key in ("server.address", "server.port")
    }
    yield
    for key, (value, where) in saved.items():
        streamlit_config.set_option(key, value, where)
    get_settings.cache_clear()


def run_app() -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=30)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.parametrize("address", [None, "0.0.0.0", "::", "192.0.2.10"])
def test_the_app_stops_before_opening_the_runtime_under_a_plain_streamlit_server_on_every_address(
    app_settings, monkeypatch, address
):
    monkeypatch.setattr(serve, "served_by_streamlit_server", lambda: True)
    monkeypatch.setattr(serve, "request_host", lambda: "localhost:8501")
    streamlit_config.set_option("server.address", address)
    errors = [e.value for e in run_app().error]
    assert len(errors) == 1 and errors[0].startswith(REFUSAL) and "cqrs-console serve" in errors[0], errors


@pytest.mark.parametrize("host", ["rebind.attacker.example:8501", "192.0.2.10:8501", None])
def test_the_app_refuses_a_foreign_host_header_when_sign_in_is_off(app_settings, monkeypatch, host):
    monkeypatch.setattr(serve, "served_by_streamlit_server", lambda: True)
    monkeypatch.setattr(serve, "request_host", lambda: host)
    streamlit_config.set_option("server.address", "127.0.0.1")
    errors = [e.value for e in run_app().error]
    assert len(errors) == 1 and errors[0].startswith(REFUSAL) and "localhost" in errors[0], errors


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://localhost:9999",
        "null",
        "http://localhost:8501.evil",
        "file://",
        "http://127.0.0.1:8501",
    ],
)
def test_the_app_refuses_a_page_of_another_origin_when_sign_in_is_off(app_settings, monkeypatch, origin):
    monkeypatch.setattr(serve, "served_by_streamlit_server", lambda: True)
    monkeypatch.setattr(serve, "request_host", lambda: "localhost:8501")
    monkeypatch.setattr(serve, "request_origin", lambda: origin)
    streamlit_config.set_option("server.address", "127.0.0.1")
    errors = [e.value for e in run_app().error]
    assert len(errors) == 1 and errors[0].startswith(REFUSAL) and "localhost" in errors[0], errors


def test_the_app_refuses_a_localhost_address_that_resolves_elsewhere(app_settings, monkeypatch):
    real = socket.getaddrinfo

    def hosts_file_maps_localhost_to_every_address(host, *args, **kwargs):
        if str(host).lower().rstrip(".") == "localhost":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("0.0.0.0", 0))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hosts_file_maps_localhost_to_every_address)
    monkeypatch.setattr(serve, "served_by_streamlit_server", lambda: True)
    monkeypatch.setattr(serve, "request_host", lambda: "localhost:8501")
    streamlit_config.set_option("server.address", "localhost")
    errors = [e.value for e in run_app().error]
    assert len(errors) == 1 and errors[0].startswith(REFUSAL) and "cqrs-console serve" in errors[0], errors


def test_the_app_goes_on_to_the_database_for_localhost_and_when_sign_in_is_on(app_settings, monkeypatch):
    monkeypatch.setattr(serve, "served_by_streamlit_server", lambda: True)
    monkeypatch.setattr(serve, "request_host", lambda: "localhost:8501")
    monkeypatch.setattr(serve, "request_origin", lambda: "http://localhost:8501")  # the page it served
    streamlit_config.set_option("server.address", "127.0.0.1")
    errors = [e.value for e in run_app().error]
    assert errors and not any(e.startswith(REFUSAL) for e in errors)  # the unreachable database's line

    monkeypatch.setenv("CQRS_AUTH_MODE", "password")
    get_settings.cache_clear()
    streamlit_config.set_option("server.address", "0.0.0.0")
    monkeypatch.setattr(serve, "request_host", lambda: "console.example.org")
    errors = [e.value for e in run_app().error]
    assert errors and not any(e.startswith(REFUSAL) for e in errors)


CHROMIUM = Path(os.environ.get("CQRS_E2E_CHROMIUM", "/usr/bin/chromium"))


@pytest.mark.e2e
def test_a_plain_streamlit_run_shows_only_the_refusal_in_a_real_browser(tmp_path):
    """The same check under a real server started without the launcher, seen in Chromium: on
    0.0.0.0 the console refuses; on 127.0.0.1 a page reached through a rebound name refuses."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        if os.environ.get("CQRS_REQUIRE_E2E") == "1":
            pytest.fail(f"No Chromium at {CHROMIUM}; CQRS_REQUIRE_E2E=1 requires it.", pytrace=False)
        pytest.skip(f"No Chromium at {CHROMIUM}")
    env = launcher_env(tmp_path)
    for address, host in (("0.0.0.0", "127.0.0.1"), ("127.0.0.1", "rebind.attacker.example")):
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(REPO / "app.py"),
            "--server.port",
            str(port),
            "--server.address",
            address,
        ]
        process = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_healthy(process, port)
            text = first_alert_in_chromium(f"http://{host}:{port}/")
        finally:
            stop(process)
        assert REFUSAL in text, (address, host, text)


# Chromium runs in a child process: Playwright's sync API refuses to start inside an event loop,
# and the browser journeys of the same pytest session keep theirs running.
_BROWSER_SCRIPT = """
import sys
from playwright.sync_api import sync_playwright

with sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path=sys.argv[1], args=[
        "--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP rebind.attacker.example 127.0.0.1"])
    try:
        page = browser.new_page()
        page.goto(sys.argv[2])
        alert = page.locator("[data-testid=stAlert]").first
        alert.wait_for(timeout=30_000)
        print(alert.inner_text())
    finally:
        browser.close()
"""


def first_alert_in_chromium(url: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _BROWSER_SCRIPT, str(CHROMIUM), url],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# ---------------------------------------------------------------- the rules


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST.", "::ffff:127.0.0.1"]
)
def test_loopback_addresses(address):
    assert serve.is_loopback_address(address)
    assert serve.exposure_problem("none", address) is None


@pytest.mark.parametrize(
    "address",
    ["0.0.0.0", "::", "192.0.2.10", "fd00::2", "example.org", "localhost.example.org", "unix:///tmp/s"],
)
def test_non_loopback_addresses(address):
    assert not serve.is_loopback_address(address)
    assert serve.exposure_problem("none", address).startswith(REFUSAL)
    assert serve.exposure_problem("password", address) is None


# ---------------------------------------------------------------- whose X-Forwarded-For is believed


def test_trusted_proxies_are_ip_networks_given_to_uvicorn_with_their_ipv4_mapped_forms(monkeypatch):
    from cqrs_core.infra.config import SettingsError, load_settings

    monkeypatch.setenv("CQRS_TRUSTED_PROXIES", " 10.0.0.5, 10.1.0.0/16 ")
    assert serve.forwarded_allow_ips(load_settings().trusted_proxies) == (
        "10.0.0.5/32,10.1.0.0/16,::ffff:a00:5/128,::ffff:a01:0/112"
    )
    for wrong in ("*", "proxy.example.org"):
        monkeypatch.setenv("CQRS_TRUSTED_PROXIES", wrong)
        with pytest.raises(SettingsError, match="CQRS_TRUSTED_PROXIES"):
            load_settings()
    monkeypatch.delenv("CQRS_TRUSTED_PROXIES")
    assert serve.forwarded_allow_ips(load_settings().trusted_proxies) == ""  # uvicorn then believes nobody


def test_the_throttle_client_is_the_peer_unless_a_forwarded_address_may_have_been_believed(monkeypatch):
    forwarded = {"X-Forwarded-For": "203.0.113.9"}
    monkeypatch.setenv(serve.FORWARDED_ALLOW_IPS, "")  # as `cqrs-console serve` sets it by default
    assert serve.throttle_client("198.51.100.20", forwarded, None) == "198.51.100.20"
    assert serve.throttle_client("::ffff:127.0.0.1", {}, None) is None  # loopback: "localhost"
    assert serve.throttle_client("::ffff:198.51.100.20", {}, None) == "198.51.100.20"

    monkeypatch.delenv(serve.FORWARDED_ALLOW_IPS)  # a plain `streamlit run`: uvicorn believes loopback peers
    assert serve.throttle_client("203.0.113.9", forwarded, None) == serve.UNVERIFIED_CLIENT
    assert serve.throttle_client("198.51.100.20", {}, None) == "198.51.100.20"
