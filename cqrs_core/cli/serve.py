"""`cqrs-console serve [streamlit run options…]`: run the console's Streamlit server in this process.

With sign-in off (`CQRS_AUTH_MODE=none`) everyone who reaches the port works as the admin, Reset
included, so the console must only be reachable from this machine. Streamlit binds every
interface when `server.address` is unset, and the address can come from a flag, a
`STREAMLIT_SERVER_ADDRESS` variable or any `config.toml`; the only place that sees the final,
merged value before the socket is bound is Streamlit's own "config parsed" signal, so the check
hangs there rather than re-reading those sources here. With sign-in off it also narrows
`server.allowedHosts` to localhost names, which makes Streamlit refuse the WebSocket of a page
reached through another host name (DNS rebinding), and refuses settings that let other web
sites open the console's WebSocket (`server.enableCORS false`, `server.corsAllowedOrigins`).
`localhost` is bound as 127.0.0.1: the name is not trusted to resolve to loopback.

Whatever the sign-in mode, the server believes X-Forwarded-For only from the proxies in
CQRS_TRUSTED_PROXIES (none by default): the sign-in throttle counts attempts per client address,
and uvicorn's default believes the header from any loopback peer, which lets anyone on this
machine (or behind a local proxy) name a fresh client with each attempt.

`app.py` repeats the check on every run (`refusal_for_this_run`) for a server started with plain
`streamlit run`, which never passes through here.

Once the server listens, it opens the process's runtime in the background (so the first visitor
does not wait for the database and the migrations) and, with CQRS_PROJECTIONS_IN=worker, starts
one `cqrs-console worker` child (`WorkerSupervisor`) that runs the projections, the lag sampler
and the background jobs next to Streamlit, in a process (and process group) of its own: a child
that exits unexpectedly is started again after a capped backoff. When the server stops (Ctrl-C,
SIGTERM) the worker gets SIGTERM, then SIGKILL after WORKER_STOP_TIMEOUT_SECONDS, and one line
says what keeps running. On Linux the child also dies with this process when it is killed
outright (SIGKILL): it asks the kernel for SIGTERM when its parent thread ends (PR_SET_PDEATHSIG).

With CQRS_METRICS_PORT set, Prometheus metrics are served at /metrics on that port before
Streamlit starts (one line and exit 2 if it cannot be bound); the supervised worker serves its
own on CQRS_WORKER_METRICS_PORT, or none (cqrs_core/ops/metrics_export.py).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cqrs_core.infra.config import Settings, get_settings
from cqrs_core.infra.db import redact
from cqrs_core.infra.logging_setup import apply_log_level
from cqrs_core.infra.processes import parent_death_signal
from cqrs_core.ops.metrics_export import MetricsPortUnavailable, serve_metrics

log = logging.getLogger("cqrs_core.cli.serve")

APP = Path(__file__).resolve().parents[2] / "app.py"
LOOPBACK_ADDRESS = "127.0.0.1"
LOCAL_HOST_NAMES = ("localhost", "127.0.0.1", "::1")
WHERE = "cqrs-console serve"  # what Streamlit's config reports as the origin of the values set here
# uvicorn reads the proxies it believes X-Forwarded-For from here when its Config is built (it
# offers Streamlit no other way); its default is 127.0.0.1,::1.
FORWARDED_ALLOW_IPS = "FORWARDED_ALLOW_IPS"
# The throttle's client for a session whose address may come from a forged X-Forwarded-For (a
# server not started by `cqrs-console serve`): all such sessions share it.
UNVERIFIED_CLIENT = "unverified-forwarded"

# The supervised projection worker (CQRS_PROJECTIONS_IN=worker): this interpreter, same environment.
WORKER_COMMAND = (sys.executable, "-m", "cqrs_core", "worker")
# A worker that exits unexpectedly is started again after this long, doubled for each exit in a
# row, at most WORKER_RESTART_MAX_DELAY_SECONDS ...
WORKER_RESTART_FIRST_DELAY_SECONDS = 1.0
WORKER_RESTART_MAX_DELAY_SECONDS = 30.0
# ... and back to the first delay once a worker had run this long.
WORKER_STABLE_SECONDS = 60.0
# On the way out: SIGTERM, then SIGKILL if the worker has not exited after this long (it stops
# after its current batch; its own stop gives its threads 10 s).
WORKER_STOP_TIMEOUT_SECONDS = 15.0
# Imported in the background once the runtime is open: what the pages' first run would import
# otherwise, while the first visitor waits (the shared page helpers, tables, charts).
FIRST_PAGE_MODULES = ("cqrs_core.app.ui", "pandas", "plotly.express")
# Linux prctl(2) option: the signal a process receives when the thread that started it ends.


class ExposureRefused(SystemExit):
    """Sign-in is off and the server would be reachable from other machines; carries one line."""


class CannotListen(SystemExit):
    """The address or port cannot be bound; carries one line."""


class BadUsers(SystemExit):
    """Sign-in is on and secrets.toml's [users] (or, in oidc mode, [auth]) cannot be used as
    they are; carries one line."""


def check_users() -> None:
    """With sign-in on, refuse to start on [users] that name a role we do not have (one line
    naming the user, the role and the valid roles) rather than answer "wrong password" later."""
    from streamlit.runtime.secrets import secrets_singleton

    from cqrs_core.app.auth import users_problem

    try:
        users = secrets_singleton.get("users") or {}
    except Exception:  # no secrets file, or one that does not parse: the app says so on its page
        return
    problem = users_problem(users) if hasattr(users, "items") else None
    if problem:
        raise BadUsers(problem)


def check_auth_section() -> None:
    """In oidc mode, refuse to start on an [auth] section st.login cannot use (one line naming
    what is missing) rather than fail on every Sign in click later."""
    from streamlit.runtime.secrets import secrets_singleton

    from cqrs_core.app.auth import auth_section_problem

    try:
        auth = secrets_singleton.get("auth") if secrets_singleton.load_if_toml_exists() else None
    except Exception:  # a secrets file that does not parse: the app says so on its page
        return
    problem = auth_section_problem(auth)
    if problem:
        raise BadUsers(problem)


# ---------------------------------------------------------------- the rules (pure)


def is_loopback_address(address: str) -> bool:
    """True for `localhost` and loopback IP literals (127.0.0.0/8, ::1, ::ffff:127.x, [::1]).
    Any other host name is not trusted to stay local: it may resolve to a public address."""
    value = address.strip().lower().rstrip(".")
    if value == "localhost":
        return True
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def host_is_local(host_header: str | None, extra: Iterable[str] = ()) -> bool:
    """True when an HTTP Host header (with or without port) names this machine by a local name."""
    if not host_header:
        return False
    try:
        parts = urlsplit(f"//{host_header.strip()}")
        hostname = parts.hostname
        _ = parts.port  # validates the port
    except ValueError:
        return False
    if hostname is None or parts.username is not None or parts.password is not None or parts.path:
        return False
    hostname = hostname.rstrip(".")
    allowed = {name.lower() for name in (*LOCAL_HOST_NAMES, *extra)}
    return hostname in allowed


def local_hosts_for(address: str | None) -> list[str]:
    """The host names a browser on this machine uses to reach a server bound to `address`."""
    names = list(LOCAL_HOST_NAMES)
    if address and is_loopback_address(address):
        bare = address.strip().lower().strip("[]").rstrip(".")
        if bare not in names:
            names.append(bare)
    return names


def exposure_problem(
    auth_mode: str, address: str | None, allowed_hosts: Iterable[str] = (), where: str = ""
) -> str | None:
    """The one line refusing this listening configuration, or None when it is safe.

    Only sign-in off is restricted: the server must listen on a loopback address, and any
    `server.allowedHosts` given must name this machine only."""
    if auth_mode != "none":
        return None
    source = f" (set by {where})" if where else ""
    if address and not is_loopback_address(address):
        return (
            f"Sign-in is off (CQRS_AUTH_MODE=none), so the console will not listen on {address}{source}: "
            f"use {LOOPBACK_ADDRESS}, or turn sign-in on with CQRS_AUTH_MODE=password."
        )
    wide = [
        host for host in allowed_hosts if host.strip().lower().rstrip(".") not in local_hosts_for(address)
    ]
    if wide:
        return (
            f"Sign-in is off (CQRS_AUTH_MODE=none), so server.allowedHosts may only name this machine, "
            f"not {', '.join(wide)}: remove them, or turn sign-in on with CQRS_AUTH_MODE=password."
        )
    return None


def cross_origin_problem(auth_mode: str, enable_cors: bool, allowed_origins: Iterable[str]) -> str | None:
    """The one line refusing settings that let other web sites open the console's WebSocket when
    sign-in is off (with it on they still need a password), or None."""
    if auth_mode != "none":
        return None
    origins = [origin for origin in (o.strip() for o in allowed_origins) if origin]
    if not enable_cors:
        setting = "server.enableCORS is false"
    elif origins:
        setting = f"server.corsAllowedOrigins names {', '.join(origins)}"
    else:
        return None
    return (
        f"Sign-in is off (CQRS_AUTH_MODE=none), so other web sites may not use the console, but {setting}: "
        "remove that setting, or turn sign-in on with CQRS_AUTH_MODE=password."
    )


def origin_is_local(origin: str | None, host_header: str | None) -> bool:
    """True when a request's Origin is the page this server served at a local name: http(s), and
    the same host and port as the (already checked) Host header. No Origin (not a browser) is
    fine; `null` (a sandboxed or file page) and every other origin are not."""
    if origin is None:
        return True
    try:
        page, host = urlsplit(origin.strip()), urlsplit(f"//{(host_header or '').strip()}")
        same = (
            page.scheme in ("http", "https")
            and page.hostname is not None
            and page.hostname.rstrip(".") == (host.hostname or "").rstrip(".")
            and _port(page.port, page.scheme) == _port(host.port, page.scheme)
        )
    except ValueError:
        return False
    return same and not page.path.strip("/") and page.username is None


def _port(port: int | None, scheme: str) -> int:
    return port if port is not None else (443 if scheme == "https" else 80)


def is_localhost_name(address: str) -> bool:
    return address.strip().lower().rstrip(".") == "localhost"


def forwarded_allow_ips(trusted_proxies: str | None) -> str:
    """uvicorn's FORWARDED_ALLOW_IPS for the CQRS_TRUSTED_PROXIES networks: each IPv4 one also as
    the IPv4-mapped IPv6 network, the peer address a server bound to `::` sees."""
    networks = [ipaddress.ip_network(item) for item in (trusted_proxies or "").split(",") if item]
    mapped = [
        ipaddress.ip_network(f"::ffff:{net.network_address}/{96 + net.prefixlen}")
        for net in networks
        if net.version == 4
    ]
    return ",".join(str(net) for net in (*networks, *mapped))


def throttle_client(
    ip_address: str | None, headers: Mapping[str, str] | None, trusted_proxies: str | None
) -> str | None:
    """The client the sign-in throttle counts a session as, from Streamlit's view of it: its
    address, None for loopback (the throttle's "localhost"; an IPv4-mapped address counts as the
    IPv4 one). When this server was not started with the proxies of CQRS_TRUSTED_PROXIES (a
    plain `streamlit run` believes X-Forwarded-For from every loopback peer) and the request
    carried that header, the address may be forged: such sessions share UNVERIFIED_CLIENT."""
    ip = _canonical_ip(ip_address) if isinstance(ip_address, str) and ip_address else None  # AppTest: none
    if os.environ.get(FORWARDED_ALLOW_IPS) == forwarded_allow_ips(trusted_proxies):
        return ip
    try:
        forwarded = bool(headers and headers.get("X-Forwarded-For"))
    except Exception:  # no session context
        forwarded = False
    return UNVERIFIED_CLIENT if forwarded else ip


def _canonical_ip(address: str) -> str | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    ip = getattr(ip, "ipv4_mapped", None) or ip
    return None if ip.is_loopback else str(ip)


# ---------------------------------------------------------------- the launcher


def guard_streamlit_config() -> None:
    """Runs each time Streamlit has merged its configuration (defaults, config.toml files,
    STREAMLIT_* variables, flags), before the server binds: refuse an exposed address, default
    the address to loopback (and `localhost` to 127.0.0.1), narrow the allowed hosts and refuse
    cross-origin settings. Also runs on a later re-parse (an edited config.toml), where it keeps
    the allowed hosts narrow; the address is bound by then."""
    from streamlit import config

    auth_mode = get_settings().auth_mode
    address = config.get_option("server.address") or None
    if address is not None and is_localhost_name(address):
        # An /etc/hosts that maps localhost elsewhere (0.0.0.0) must not widen what is bound.
        config.set_option("server.address", LOOPBACK_ADDRESS, WHERE)
        address = LOOPBACK_ADDRESS
    allowed = list(config.get_option("server.allowedHosts") or [])
    if auth_mode == "none":
        # First, so that even a refused re-parse leaves the running server narrow.
        config.set_option("server.allowedHosts", local_hosts_for(address), WHERE)
    where = config.get_where_defined("server.address")
    problem = exposure_problem(auth_mode, address, allowed, where=_describe(where)) or cross_origin_problem(
        auth_mode,
        bool(config.get_option("server.enableCORS")),
        config.get_option("server.corsAllowedOrigins") or [],
    )
    if problem:
        raise ExposureRefused(problem)
    if auth_mode == "none" and address is None:
        config.set_option("server.address", LOOPBACK_ADDRESS, WHERE)


def _describe(where_defined: str) -> str:
    if where_defined.startswith("<"):
        return ""
    if where_defined.endswith(".toml"):
        return where_defined
    return (
        "the command line or STREAMLIT_SERVER_ADDRESS" if "command-line" in where_defined else where_defined
    )


def add_parsers(subparsers) -> None:
    # '+' as the only prefix: every option after `serve` (--server.port 8600 …) is Streamlit's.
    p = subparsers.add_parser(
        "serve",
        prefix_chars="+",
        add_help=False,
        help="run the console (`streamlit run app.py` with the given options); with sign-in off it only "
        "listens on 127.0.0.1",
    )
    p.add_argument("streamlit_args", nargs=argparse.REMAINDER)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    return serve(list(args.streamlit_args))


# ---------------------------------------------------------------- the supervised worker


def _exit_description(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


class WorkerSupervisor:
    """Runs one `cqrs-console worker` child and starts it again when it exits unexpectedly.

    The child runs in its own process group (a Ctrl-C in the terminal reaches this process only,
    which stops the child itself, after the server), with this process's environment. Its `pid`
    is None while it is being started again; `last_exit` says how the previous one ended. The
    thread that starts the children stays alive while they run: on Linux the kernel sends them
    SIGTERM when that thread ends (this process killed outright included)."""

    def __init__(
        self,
        command: Iterable[str] = WORKER_COMMAND,
        first_delay: float = WORKER_RESTART_FIRST_DELAY_SECONDS,
        max_delay: float = WORKER_RESTART_MAX_DELAY_SECONDS,
        stop_timeout: float = WORKER_STOP_TIMEOUT_SECONDS,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.command = list(command)
        self.env = dict(env) if env is not None else None  # None: this process's environment
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.stop_timeout = stop_timeout
        self.starts = 0
        self.last_exit: str | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """The running worker's pid, None while there is none."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._supervise, name="worker-supervisor", daemon=True)
                self._thread.start()

    def _supervise(self) -> None:
        delay = self.first_delay
        while not self._stopping.is_set():
            started = time.monotonic()
            with self._lock:
                if self._stopping.is_set():
                    return
                try:
                    process = subprocess.Popen(
                        self.command,
                        process_group=0,
                        preexec_fn=parent_death_signal(os.getpid()),
                        env=self.env,
                    )
                except OSError as exc:
                    process = None
                    self.last_exit = f"could not start: {exc.strerror or exc}"
                else:
                    self._process = process
                    self.starts += 1
            if process is not None:
                log.info("the projection worker runs as pid %d", process.pid)
                self.last_exit = _exit_description(process.wait())
            if self._stopping.is_set():
                return
            if time.monotonic() - started >= WORKER_STABLE_SECONDS:
                delay = self.first_delay
            log.warning(
                "the projection worker%s stopped unexpectedly (%s); starting it again in %g s",
                f" (pid {process.pid})" if process is not None else "",
                self.last_exit,
                delay,
            )
            self._stopping.wait(delay)
            delay = min(self.max_delay, delay * 2)

    def stop(self) -> str | None:
        """Stop the worker: SIGTERM to its process group, SIGKILL after `stop_timeout`; returns
        how it ended (None if none ran)."""
        with self._lock:
            self._stopping.set()
            process, thread = self._process, self._thread
        if process is None or thread is None:
            return None
        self._signal(process, signal.SIGTERM)
        thread.join(self.stop_timeout)
        if thread.is_alive():
            log.warning(
                "the projection worker (pid %d) did not stop within %.0f s; killing it",
                process.pid,
                self.stop_timeout,
            )
            self._signal(process, signal.SIGKILL)
            thread.join(self.stop_timeout)
        return self.last_exit

    @staticmethod
    def _signal(process: subprocess.Popen[bytes], signum: int) -> None:
        if process.returncode is None:  # not reaped: its pid (and group id) are still its own
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signum)


# ---------------------------------------------------------------- serving


@contextlib.contextmanager
def when_listening(start: Callable[[], None]) -> Iterator[None]:
    """Call `start` once Streamlit's server listens (right after its own start-up, on the
    server's event loop: `start` must only start threads). Streamlit has no public hook; when
    its private one is missing, `start` runs before the server starts instead."""
    from streamlit.web import bootstrap

    original: Any = getattr(bootstrap, "_on_server_start", None)
    if original is None:
        start()
        yield
        return

    def on_server_start(server: Any) -> None:
        original(server)
        start()

    bootstrap._on_server_start = on_server_start
    try:
        yield
    finally:
        bootstrap._on_server_start = original


@contextlib.contextmanager
def session_routes_installed() -> Iterator[None]:
    """Add the sign-in cookie's endpoint (cqrs_core/app/session_routes.py) to the routes of the
    Starlette server Streamlit builds. Streamlit's public way to add routes, `st.App(routes=…)`,
    runs the app under uvicorn without `streamlit run`'s start-up (the hook `when_listening`
    uses, the server's own socket binding); the managed server `streamlit run` builds has no
    public hook, so this wraps its private route factory, and only here.
    tests/integration/test_session_cookie.py fails loudly if that factory moves or changes."""
    from streamlit import config
    from streamlit.web.server.starlette import starlette_app

    from cqrs_core.app.session_routes import session_routes

    original: Any = starlette_app.create_streamlit_routes

    def with_session_routes(runtime: Any) -> list[Any]:
        return [*session_routes(str(config.get_option("server.baseUrlPath") or "")), *original(runtime)]

    starlette_app.create_streamlit_routes = with_session_routes
    try:
        yield
    finally:
        starlette_app.create_streamlit_routes = original


def what_keeps_running(settings: Settings, worker_stopped: bool) -> str:
    """The line `serve` prints on its way out: what it stopped, and what keeps running."""
    from cqrs_core.cli.database import data_dir_of, embedded_server_running

    stopped = "the console and its projection worker" if worker_stopped else "the console"
    if settings.database_url:
        return (
            f"Stopped {stopped}; the database at {redact(settings.database_url)} is not the console's "
            "and keeps running."
        )
    data_dir = data_dir_of(settings)
    if embedded_server_running(settings.data_dir):
        return (
            f"Stopped {stopped}; the embedded PostgreSQL server keeps running for {data_dir} "
            "(stop it with `cqrs-console db stop`)."
        )
    return f"Stopped {stopped}; no embedded PostgreSQL server is running for {data_dir}."


def serve(streamlit_args: list[str]) -> int:
    """Run `streamlit run app.py *streamlit_args` here until the server stops; the exit code."""
    import click
    from streamlit import config
    from streamlit.web import cli as streamlit_cli

    if not APP.is_file():
        print(
            f"cqrs-console: {APP} is missing: run `cqrs-console serve` from a checkout of the console.",
            file=sys.stderr,
        )
        return 2
    settings = get_settings()  # a bad CQRS_ variable is one line before Streamlit starts
    apply_log_level(settings.log_level)
    # Before the server starts: uvicorn reads it when it builds its Config.
    os.environ[FORWARDED_ALLOW_IPS] = forwarded_allow_ips(settings.trusted_proxies)
    if settings.auth_mode == "none":
        # Streamlit's page-long warning about server.enableCORS=false comes first; the refusal says it in one line.
        logging.getLogger("streamlit.config").addFilter(
            lambda record: "server.enableCORS=false" not in record.getMessage()
        )
    parses = 0

    def guard() -> None:
        nonlocal parses
        parses += 1
        try:
            guard_streamlit_config()
            if parses == 1:
                check_can_listen()
                if settings.auth_mode == "password":
                    check_users()
                elif settings.auth_mode == "oidc":
                    check_auth_section()
        except (ExposureRefused, CannotListen, BadUsers) as exc:
            if parses == 1:
                raise
            # An edited config.toml re-parsed by Streamlit's file watcher: the socket is bound already.
            log.error("%s The running server keeps its address; restart it to apply the change.", exc)

    from cqrs_core.app.runtime import PROCESS_RUNTIME  # the app's side: only when serving

    supervisor = WorkerSupervisor(env=worker_env(settings)) if settings.projections_in == "worker" else None
    try:
        stop_metrics = serve_metrics(settings.metrics_port, settings.metrics_address, app_projections)
    except MetricsPortUnavailable as exc:
        print(f"cqrs-console: {exc}", file=sys.stderr)
        return 2
    listening = threading.Event()

    def start_background_work() -> None:
        listening.set()
        if supervisor is not None:
            PROCESS_RUNTIME.projection_worker = supervisor
            supervisor.start()
        PROCESS_RUNTIME.open_in_background(then_import=FIRST_PAGE_MODULES)

    disconnect = config.on_config_parsed(guard, force_connect=True)
    try:
        with when_listening(start_background_work), session_routes_installed():
            result = streamlit_cli.main(
                ["run", str(APP), *streamlit_args], prog_name="streamlit", standalone_mode=False
            )
    except (ExposureRefused, CannotListen, BadUsers) as exc:
        print(f"cqrs-console: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # binding failed in a way check_can_listen did not foresee
        log.debug("the server could not start", exc_info=True)
        print(
            f"cqrs-console: {cannot_listen_line(config.get_option('server.address'), exc)}", file=sys.stderr
        )
        return 2
    except click.ClickException as exc:
        print(f"cqrs-console: {exc.format_message()}", file=sys.stderr)
        return 2
    finally:
        disconnect()
        if listening.is_set():
            stop_background_work(settings, supervisor)
        if stop_metrics is not None:
            stop_metrics()
    return result if isinstance(result, int) else 0


def worker_env(settings: Settings) -> dict[str, str]:
    """The supervised worker's environment: this process's, with the worker's own metrics port
    (CQRS_WORKER_METRICS_PORT, or none) as its CQRS_METRICS_PORT, which is this process's."""
    env = {k: v for k, v in os.environ.items() if k != "CQRS_METRICS_PORT"}
    if settings.worker_metrics_port is not None:
        env["CQRS_METRICS_PORT"] = str(settings.worker_metrics_port)
    return env


def app_projections() -> Any:
    """The app process's projection manager for the metrics endpoint, None until its runtime is open."""
    from cqrs_core.app.runtime import PROCESS_RUNTIME

    return PROCESS_RUNTIME.get().service.projections if PROCESS_RUNTIME.is_open else None


def stop_background_work(settings: Settings, supervisor: WorkerSupervisor | None) -> None:
    """After the server stopped: stop the worker, release the runtime (in app mode, this process's
    projections), and say in one line what keeps running."""
    from cqrs_core.app.runtime import PROCESS_RUNTIME

    worker_stopped = supervisor is not None and supervisor.stop() is not None
    PROCESS_RUNTIME.projection_worker = None
    try:
        PROCESS_RUNTIME.release(wait_for_opening=False)
    except Exception:
        log.warning("the console's runtime did not close cleanly", exc_info=True)
    try:
        line = what_keeps_running(settings, worker_stopped)
    except Exception:  # the line is a courtesy: never a traceback on the way out
        log.debug("could not tell what keeps running", exc_info=True)
        return
    print(f"cqrs-console: {line}", flush=True)


def check_can_listen() -> None:
    """With a port given, find out before Streamlit does whether the address and port can be bound
    (Streamlit logs a line and exits 1 for a busy port, and shows a traceback for other errors)."""
    from streamlit import config

    port = config.get_option("server.port")
    address = config.get_option("server.address")
    if not config.is_manually_set("server.port") or not port or not address:
        return  # Streamlit tries the next ports itself, or binds every address
    bare = address.strip().strip("[]")
    try:
        with socket.socket(socket.AF_INET6 if ":" in bare else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Streamlit binds
            probe.bind((bare, port))
    except OSError as exc:
        raise CannotListen(cannot_listen_line(address, exc, port)) from None


def cannot_listen_line(address: str | None, exc: OSError, port: int | None = None) -> str:
    where = f"{address or 'every address'}" + (f" port {port}" if port else "")
    if exc.errno in (errno.EADDRINUSE, errno.EACCES):
        return f"Cannot listen on {where}: the port is in use or reserved; choose another with --server.port."
    reason = exc.strerror or str(exc)
    return (
        f"Cannot listen on {where} ({reason}): use an address of this machine, such as {LOOPBACK_ADDRESS}, "
        "with --server.address."
    )


# ---------------------------------------------------------------- the check inside the app


def served_by_streamlit_server() -> bool:
    """True when the script runs under a real Streamlit server (not AppTest's stand-in runtime)."""
    from streamlit.runtime import Runtime

    return Runtime.exists() and type(Runtime.instance()) is Runtime


def request_host() -> str | None:
    """The Host header of this session's connection, if any."""
    return _request_header("Host")


def request_origin() -> str | None:
    """The Origin header of this session's connection (a browser always sends one), if any."""
    return _request_header("Origin")


def _request_header(name: str) -> str | None:
    import streamlit as st

    try:
        return st.context.headers.get(name)
    except Exception:  # no session context
        return None


def resolves_to_loopback(name: str) -> bool:
    """True when every address `name` resolves to is a loopback one (False if it does not resolve)."""
    try:
        found = {str(info[4][0]) for info in socket.getaddrinfo(name.strip().rstrip(".") or name, None)}
    except (OSError, UnicodeError):
        return False
    return bool(found) and all(is_loopback_address(ip.split("%", 1)[0]) for ip in found)


def refusal_for_this_run(auth_mode: str) -> str | None:
    """Defence in depth for app.py: with sign-in off, the one line to show instead of the console
    when the server may be reachable from elsewhere (started without `cqrs-console serve`; a
    `localhost` that resolves elsewhere included), the page was reached through a host name that
    is not this machine's (DNS rebinding), or another web site opened the connection (Origin)."""
    if auth_mode != "none" or not served_by_streamlit_server():
        return None
    from streamlit import config

    address = config.get_option("server.address") or None
    if (
        address is None
        or not is_loopback_address(address)
        or (is_localhost_name(address) and not resolves_to_loopback(address))
    ):
        return (
            "Sign-in is off (CQRS_AUTH_MODE=none) and this server listens on "
            f"{address or 'every address'}: start it with `cqrs-console serve` (or `make run`), "
            "or turn sign-in on with CQRS_AUTH_MODE=password."
        )
    host = request_host()
    if not host_is_local(host, local_hosts_for(address)) or not origin_is_local(request_origin(), host):
        return (
            "Sign-in is off (CQRS_AUTH_MODE=none), so the console only answers at localhost: open it at "
            f"http://localhost:{config.get_option('server.port')}/."
        )
    return None
