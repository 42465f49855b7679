"""`cqrs-console serve [streamlit run options…]`: run the console's Streamlit server in this process.

With sign-in off (`CQRS_AUTH_MODE=none`) everyone who reaches the port works as the admin, Reset
included, so the console must only be reachable from this machine. Streamlit binds every
interface when `server.address` is unset, and the address can come from a flag, a
`STREAMLIT_SERVER_ADDRESS` variable or any `config.toml`; the only place that sees the final,
merged value before the socket is bound is Streamlit's own "config parsed" signal, so the check
hangs there rather than re-reading those sources here. With sign-in off it also narrows
`server.allowedHosts` to localhost names, which makes Streamlit refuse the WebSocket of a page
reached through another host name (DNS rebinding).

`app.py` repeats the check on every run (`refusal_for_this_run`) for a server started with plain
`streamlit run`, which never passes through here.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from cqrs_core.config import get_settings

log = logging.getLogger("cqrs_core.serve")

APP = Path(__file__).resolve().parents[1] / "app.py"
LOOPBACK_ADDRESS = "127.0.0.1"
LOCAL_HOST_NAMES = ("localhost", "127.0.0.1", "::1")
WHERE = "cqrs-console serve"  # what Streamlit's config reports as the origin of the values set here


class ExposureRefused(SystemExit):
    """Sign-in is off and the server would be reachable from other machines; carries one line."""


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


def exposure_problem(auth_mode: str, address: str | None, allowed_hosts: Iterable[str] = (),
                     where: str = "") -> str | None:
    """The one line refusing this listening configuration, or None when it is safe.

    Only sign-in off is restricted: the server must listen on a loopback address, and any
    `server.allowedHosts` given must name this machine only."""
    if auth_mode != "none":
        return None
    source = f" (set by {where})" if where else ""
    if address and not is_loopback_address(address):
        return (f"Sign-in is off (CQRS_AUTH_MODE=none), so the console will not listen on {address}{source}: "
                f"use {LOOPBACK_ADDRESS}, or turn sign-in on with CQRS_AUTH_MODE=password.")
    wide = [host for host in allowed_hosts if host.strip().lower().rstrip(".") not in local_hosts_for(address)]
    if wide:
        return (f"Sign-in is off (CQRS_AUTH_MODE=none), so server.allowedHosts may only name this machine, "
                f"not {', '.join(wide)}: remove them, or turn sign-in on with CQRS_AUTH_MODE=password.")
    return None


# ---------------------------------------------------------------- the launcher


def guard_streamlit_config() -> None:
    """Runs each time Streamlit has merged its configuration (defaults, config.toml files,
    STREAMLIT_* variables, flags), before the server binds: refuse an exposed address, default
    the address to loopback and narrow the allowed hosts. Also runs on a later re-parse (an
    edited config.toml), where it keeps the allowed hosts narrow; the address is bound by then."""
    from streamlit import config

    auth_mode = get_settings().auth_mode
    address = config.get_option("server.address") or None
    allowed = list(config.get_option("server.allowedHosts") or [])
    if auth_mode == "none":
        # First, so that even a refused re-parse leaves the running server narrow.
        config.set_option("server.allowedHosts", local_hosts_for(address), WHERE)
    where = config.get_where_defined("server.address")
    problem = exposure_problem(auth_mode, address, allowed, where=_describe(where))
    if problem:
        raise ExposureRefused(problem)
    if auth_mode == "none" and address is None:
        config.set_option("server.address", LOOPBACK_ADDRESS, WHERE)


def _describe(where_defined: str) -> str:
    if where_defined.startswith("<"):
        return ""
    if where_defined.endswith(".toml"):
        return where_defined
    return "the command line or STREAMLIT_SERVER_ADDRESS" if "command-line" in where_defined else where_defined


def add_parsers(subparsers) -> None:
    # '+' as the only prefix: every option after `serve` (--server.port 8600 …) is Streamlit's.
    p = subparsers.add_parser(
        "serve", prefix_chars="+", add_help=False,
        help="run the console (`streamlit run app.py` with the given options); with sign-in off it only "
             "listens on 127.0.0.1",
    )
    p.add_argument("streamlit_args", nargs=argparse.REMAINDER)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    return serve(list(args.streamlit_args))


def serve(streamlit_args: list[str]) -> int:
    """Run `streamlit run app.py *streamlit_args` here until the server stops; the exit code."""
    import click
    from streamlit import config
    from streamlit.web import cli as streamlit_cli

    if not APP.is_file():
        print(f"cqrs-console: {APP} is missing: run `cqrs-console serve` from a checkout of the console.",
              file=sys.stderr)
        return 2
    get_settings()  # a bad CQRS_ variable is one line before Streamlit starts
    parses = 0

    def guard() -> None:
        nonlocal parses
        parses += 1
        try:
            guard_streamlit_config()
        except ExposureRefused as exc:
            if parses == 1:
                raise
            # An edited config.toml re-parsed by Streamlit's file watcher: the socket is bound already.
            log.error("%s The running server keeps its address; restart it to apply the change.", exc)

    disconnect = config.on_config_parsed(guard, force_connect=True)
    try:
        result = streamlit_cli.main(["run", str(APP), *streamlit_args], prog_name="streamlit",
                                    standalone_mode=False)
    except ExposureRefused as exc:
        print(f"cqrs-console: {exc}", file=sys.stderr)
        return 2
    except click.ClickException as exc:
        print(f"cqrs-console: {exc.format_message()}", file=sys.stderr)
        return 2
    finally:
        disconnect()
    return result if isinstance(result, int) else 0


# ---------------------------------------------------------------- the check inside the app


def served_by_streamlit_server() -> bool:
    """True when the script runs under a real Streamlit server (not AppTest's stand-in runtime)."""
    from streamlit.runtime import Runtime

    return Runtime.exists() and type(Runtime.instance()) is Runtime


def request_host() -> str | None:
    """The Host header of this session's connection, if any."""
    import streamlit as st

    try:
        return st.context.headers.get("Host")
    except Exception:  # no session context
        return None


def refusal_for_this_run(auth_mode: str) -> str | None:
    """Defence in depth for app.py: with sign-in off, the one line to show instead of the console
    when the server may be reachable from elsewhere (started without `cqrs-console serve`) or the
    page was reached through a host name that is not this machine's (DNS rebinding)."""
    if auth_mode != "none" or not served_by_streamlit_server():
        return None
    from streamlit import config

    address = config.get_option("server.address") or None
    if address is None or not is_loopback_address(address):
        return ("Sign-in is off (CQRS_AUTH_MODE=none) and this server listens on "
                f"{address or 'every address'}: start it with `cqrs-console serve` (or `make run`), "
                "or turn sign-in on with CQRS_AUTH_MODE=password.")
    if not host_is_local(request_host(), local_hosts_for(address)):
        return ("Sign-in is off (CQRS_AUTH_MODE=none), so the console only answers at localhost: open it at "
                f"http://localhost:{config.get_option('server.port')}/.")
    return None
