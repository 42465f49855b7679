"""The endpoint that sets and drops the sign-in cookie (cqrs_core/app/sessions.py describes the
flow). A Streamlit script run cannot answer an HTTP request, and an HttpOnly cookie cannot be set
from the page, so the server answers `POST /_console/session` (a hand-over ticket in, the cookie
out) and `DELETE /_console/session` (the session revoked, the cookie dropped).

`cqrs-console serve` adds these routes to Streamlit's own server (`cqrs_core.cli.serve.
install_session_routes`). Under a plain `streamlit run app.py` they are missing: sign-in then
lasts as long as the browser tab's session, as it did before.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cqrs_core.app.runtime import PROCESS_RUNTIME
from cqrs_core.app.sessions import (
    COOKIE_NAME,
    SessionStore,
    cookie_header,
    endpoint_path,
    parse_json,
    sign_cookie,
    verify_cookie,
)

log = logging.getLogger("cqrs_console.sessions")


def _secret() -> str:
    from streamlit import config

    return str(config.get_option("server.cookieSecret") or "")


def _store() -> SessionStore:
    rt = PROCESS_RUNTIME.get()
    return SessionStore(rt.service.engine, rt.settings.session_max_age_seconds, _secret())


MAX_BODY_BYTES = 1024  # a ticket is 43 characters: anything much bigger is not one


def _same_origin(request: Request) -> bool:
    """The hand-over comes from the console's own page: a JSON fetch, whose Origin is the host
    it was sent to. A form on another site (login CSRF: signing a visitor in as someone else)
    can send neither a JSON content type without a preflight nor this Origin."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        return False
    origin, host = request.headers.get("origin", ""), request.headers.get("host", "")
    return bool(origin) and bool(host) and urlsplit(origin).netloc.lower() == host.lower()


async def _body(request: Request) -> bytes | None:
    """The request's body, or None past MAX_BODY_BYTES (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return body


def _secure(request: Request) -> bool:
    """Over TLS: served with server.sslCertFile, or through a trusted proxy that says https
    (uvicorn believes X-Forwarded-Proto only from CQRS_TRUSTED_PROXIES)."""
    return request.url.scheme in ("https", "wss")


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


async def begin(request: Request) -> Response:
    """Redeem a hand-over ticket: 204 with the session cookie, or 403 with nothing set (413 for a
    body too big to be a ticket)."""
    if not _same_origin(request):
        log.warning("refused a sign-in hand-over that did not come from the console's own page")
        return _no_store(Response(status_code=403))
    body = await _body(request)
    if body is None:
        return _no_store(Response(status_code=413))
    ticket = parse_json(body).get("ticket")
    if not isinstance(ticket, str) or not ticket or len(ticket) > 200:
        return _no_store(Response(status_code=403))
    try:
        redeemed = await run_in_threadpool(lambda: _store().redeem(ticket))
    except Exception:
        log.exception("could not redeem a sign-in ticket")
        return _no_store(Response(status_code=503))
    if redeemed is None:
        log.warning("refused a sign-in ticket that is unknown, used or expired")
        return _no_store(Response(status_code=403))
    token, expires_at = redeemed
    max_age = max(0, int((expires_at - datetime.now(UTC)).total_seconds()))
    response = Response(status_code=204)
    response.headers.append(
        "Set-Cookie", cookie_header(sign_cookie(_secret(), token, expires_at), max_age, _secure(request))
    )
    return _no_store(response)


async def end(request: Request) -> Response:
    """Revoke the cookie's session (if it is one) and drop the cookie: 204 either way."""
    token = verify_cookie(_secret(), request.cookies.get(COOKIE_NAME), datetime.now(UTC))
    if token is not None:
        try:
            await run_in_threadpool(lambda: _store().revoke_token(token))
        except Exception:
            log.exception("could not revoke a session")
            return _no_store(Response(status_code=503))
    response = Response(status_code=204)
    response.headers.append("Set-Cookie", cookie_header("", 0, _secure(request)))
    return _no_store(response)


async def endpoint(request: Request) -> Response:
    return await (begin(request) if request.method == "POST" else end(request))


def session_routes(base_url_path: str) -> list[Any]:
    """The routes to add to Streamlit's server (before its own)."""
    return [Route(endpoint_path(base_url_path), endpoint, methods=["POST", "DELETE"])]
