"""The audit HTTP API and the token check shared with the admin endpoints.

    GET /api/audit/messages?since=&until=&message_id=&account=&sender=&recipient=&patient_ins=|patient_key=
                            &doc_type=&status=&rule_version=&limit=&cursor=&order=desc|asc&format=json|csv
    GET /api/audit/messages/{id}          the message's summary and timeline (JSON)

Authentication: `Authorization: Bearer <token>` (or the auditor page's cookie, so that its export links work;
GET only, SameSite=Strict). No or unknown token: 401 `{"error": ...}`; a token of another role: 403. An auditor
token scoped to an account sees only that account's messages (404 for the others' timelines). Every query is
audited (`audit_searched`, actor `token:<name>`).

The application holds app["pool"] (asyncpg pool, runtime role), app["settings"], app["patient_key"].
Access logs must not print query strings (they may hold an INS): log request.path only.
"""

from __future__ import annotations

import json

from aiohttp import web

from hub.audit import search, tokens
from hub.audit.tokens import Token
from hub.errors import InputError

COOKIE = "hub_token"
SECURITY_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                    "X-Content-Type-Options": "nosniff"}


def json_error(cls: type[web.HTTPException], message: str, **headers: str) -> web.HTTPException:
    return cls(text=json.dumps({"error": message}), content_type="application/json",
               headers={**SECURITY_HEADERS, **headers})


def bearer(request: web.Request, *, cookie: bool = False) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if cookie:
        return request.cookies.get(COOKIE)
    return None


async def authenticate(request: web.Request, *, cookie: bool = False) -> Token | None:
    secret = bearer(request, cookie=cookie)
    if not secret:
        return None
    async with request.app["pool"].acquire() as conn:
        return await tokens.lookup(conn, secret)


async def require_token(request: web.Request, role: str, *, cookie: bool = False) -> Token:
    """The request's token if it has `role`; else raise 401 (no or unknown token) or 403 (other role), as JSON.
    `cookie=True` also accepts the auditor page's cookie (GET endpoints only)."""
    secret = bearer(request, cookie=cookie)
    if not secret:
        raise json_error(web.HTTPUnauthorized, "a bearer token is required", **{"WWW-Authenticate": "Bearer"})
    async with request.app["pool"].acquire() as conn:
        token = await tokens.lookup(conn, secret)
    if token is None:
        raise json_error(web.HTTPUnauthorized, "unknown or revoked token",
                         **{"WWW-Authenticate": 'Bearer error="invalid_token"'})
    if token.role != role:
        raise json_error(web.HTTPForbidden, f"this endpoint needs the {role} role")
    return token


async def run_search(request: web.Request, token: Token, params, via: str) -> search.Page:
    """Parse filters, search within the token's scope and audit the query. InputError on bad parameters."""
    settings = request.app["settings"]
    filters = search.parse_filters(params, request.app.get("patient_key"))
    limit_text = params.get("limit") or str(settings.audit.page_size)
    if not limit_text.isdigit():
        raise InputError("limit: expected a number")
    async with request.app["pool"].acquire() as conn:
        page = await search.search(conn, filters, scope=token.account, cursor=params.get("cursor") or None,
                                   limit=int(limit_text), order=params.get("order") or "desc")
        await search.log_query(conn, actor=f"token:{token.name}", via=via,
                               filters={**filters.facts(), **({"scope": token.account} if token.account else {})},
                               results=len(page.messages))
    return page


PARAMETERS = frozenset({"since", "until", "message_id", "message", "account", "sender", "recipient", "patient_ins",
                        "patient_key", "doc_type", "status", "rule_version", "limit", "cursor", "order", "format"})


def parameter_problem(query, known: frozenset[str] = PARAMETERS) -> str | None:
    """An unknown or repeated parameter: a typo (`recipent=`) would otherwise widen an auditor's search to every
    message, and of two values only one would be used."""
    for key in query:
        if key not in known:
            return f"unknown parameter {key!r} (known: {', '.join(sorted(known)) or 'none'})"
        if len(query.getall(key)) > 1:
            return f"parameter {key!r} given more than once"
    return None


async def messages(request: web.Request) -> web.StreamResponse:
    token = await require_token(request, "auditor", cookie=True)
    problem = parameter_problem(request.query)
    if problem:
        raise json_error(web.HTTPBadRequest, problem)
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise json_error(web.HTTPBadRequest, "format: expected json or csv")
    try:
        page = await run_search(request, token, request.query, "http")
    except InputError as exc:
        raise json_error(web.HTTPBadRequest, str(exc)) from None
    headers = dict(SECURITY_HEADERS)
    if page.next_cursor:
        headers["X-Next-Cursor"] = page.next_cursor
    if fmt == "csv":
        headers["Content-Disposition"] = 'attachment; filename="audit-messages.csv"'
        return web.Response(text=search.to_csv(page.messages), content_type="text/csv", charset="utf-8",
                            headers=headers)
    return web.json_response(search.to_json(page), headers=headers)


async def timeline(request: web.Request) -> web.Response:
    token = await require_token(request, "auditor", cookie=True)
    message_id = request.match_info["id"]
    async with request.app["pool"].acquire() as conn:
        found = await search.message_timeline(conn, message_id, scope=token.account)
        await search.log_query(conn, actor=f"token:{token.name}", via="http",
                               filters={"timeline": message_id}, results=0 if found is None else 1)
    if found is None:
        raise json_error(web.HTTPNotFound, f"no message {message_id} in your audit scope")
    summary, events = found
    return web.json_response({"message": summary.as_dict(), "events": [search.event_json(e) for e in events]},
                             headers=SECURITY_HEADERS)


def routes() -> list[web.RouteDef]:
    """The API and the auditor pages."""
    from hub.web import audit_pages

    return [web.get("/api/audit/messages", messages), web.get("/api/audit/messages/{id}", timeline),
            *audit_pages.routes()]


def setup(app: web.Application) -> None:
    app.add_routes(routes())
