"""The operator's admin API (bearer token with the `operator` role): directory look-up, the queue, rules status.
Errors are JSON with the HTTP status.

    GET  /api/queue?state=&domain=&account=&limit=   messages waiting or dead and the summary (hub queue list)
    GET  /api/queue/summary?state=                   recipients by domain and age bucket (hub queue summary)
    GET  /api/queue/{id}                             the message, each recipient's why and next (hub queue show)
    GET  /api/queue/{id}/content                     the message as stored, message/rfc822 (audited)
    POST /api/queue/{id}/hold     {"reason": "..."}  hold; /release, /requeue; /delete {"reason": "..."} (required)
    POST /api/queue/flush         {"domain": "..."}  deferred recipients due now (domain optional)

The actions are hub.queue.ops, audited with the actor `token:<name>`. An unknown id is 404, an action that does not
apply to the message's state 409, a bad parameter 400.
"""

from __future__ import annotations

from aiohttp import web

from hub.errors import InputError
from hub.queue import ops
from hub.web.audit_api import SECURITY_HEADERS, json_error, parameter_problem, require_token


async def directory_lookup(request: web.Request) -> web.StreamResponse:
    await require_token(request, "operator")
    _params(request, "q", "limit")
    from hub.directory import http

    return await http.lookup(request)


def _json(data, status: int = 200) -> web.Response:
    import json

    return web.json_response(data, status=status,
                             dumps=lambda d: json.dumps(d, default=lambda v: v.isoformat() if hasattr(v, "isoformat")
                                                        else str(v), ensure_ascii=False))


def _fail(exc: InputError) -> web.HTTPException:
    cls = web.HTTPNotFound if isinstance(exc, ops.UnknownMessage) else \
        web.HTTPConflict if isinstance(exc, ops.WrongState) else web.HTTPBadRequest
    return json_error(cls, str(exc))


def _params(request: web.Request, *known: str) -> None:
    """A misspelt or repeated parameter is a 400 naming it: `?acount=` would list, `flush?domian=` flush, everything."""
    problem = parameter_problem(request.query, frozenset(known))
    if problem:
        raise json_error(web.HTTPBadRequest, problem)


def _limit(request: web.Request) -> int:
    text = request.query.get("limit", "100")
    if not text.isdigit() or not 0 < int(text) <= 10000:
        raise json_error(web.HTTPBadRequest, "limit: expected a number from 1 to 10000")
    return int(text)


async def _body(request: web.Request, *known: str) -> dict:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except ValueError:
        raise json_error(web.HTTPBadRequest, "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise json_error(web.HTTPBadRequest, "the body must be a JSON object")
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise json_error(web.HTTPBadRequest, f"unknown key {unknown[0]!r} in the body (known: "
                                             f"{', '.join(known) or 'none'})")
    return data


async def queue_list(request: web.Request) -> web.Response:
    await require_token(request, "operator")
    _params(request, "state", "domain", "account", "limit")
    q = request.query
    try:
        async with request.app["pool"].acquire() as conn:
            messages, summary = await ops.list_messages(conn, state=q.get("state", "all"), domain=q.get("domain"),
                                                        account=q.get("account"), limit=_limit(request))
    except InputError as exc:
        raise _fail(exc) from None
    held = [{"id": m["id"], "account": m["account"], "received_at": m["received_at"]}
            for m in messages if "held" in m["state"] or "dead" in m["state"]]
    return _json({"messages": messages, "summary": summary, "recipients": summary["recipients"],
                  "held_or_dead": held})


async def queue_shape(request: web.Request) -> web.Response:
    await require_token(request, "operator")
    _params(request, "state")
    try:
        async with request.app["pool"].acquire() as conn:
            return _json(await ops.summary(conn, state=request.query.get("state", "waiting")))
    except InputError as exc:
        raise _fail(exc) from None


async def queue_show(request: web.Request) -> web.Response:
    await require_token(request, "operator")
    _params(request)
    try:
        async with request.app["pool"].acquire() as conn:
            return _json(await ops.show(conn, request.match_info["id"], request.app["settings"]))
    except InputError as exc:
        raise _fail(exc) from None


async def queue_content(request: web.Request) -> web.Response:
    token = await require_token(request, "operator")
    _params(request)
    try:
        async with request.app["pool"].acquire() as conn:
            body = await ops.view(conn, request.match_info["id"], f"token:{token.name}")
    except InputError as exc:
        raise _fail(exc) from None
    return web.Response(body=body, content_type="message/rfc822", headers=SECURITY_HEADERS)


async def queue_action(request: web.Request) -> web.Response:
    token = await require_token(request, "operator")
    actor = f"token:{token.name}"
    action = request.match_info["action"]
    _params(request)
    data = await _body(request, "reason")
    mid = request.match_info.get("id")
    reason = data.get("reason", "")
    if not isinstance(reason, str):
        raise json_error(web.HTTPBadRequest, "reason: expected a string")
    try:
        async with request.app["pool"].acquire() as conn:
            if action == "hold":
                n = await ops.hold(conn, mid, actor, reason)
            elif action == "release":
                n = await ops.release(conn, mid, actor)
            elif action == "requeue":
                n = await ops.requeue(conn, mid, actor)
            elif action == "delete":
                n = await ops.delete(conn, mid, actor, reason)
            else:
                raise json_error(web.HTTPNotFound, f"no queue action {action!r}: hold, release, requeue, delete")
    except InputError as exc:
        raise _fail(exc) from None
    return _json({"id": mid, "action": action, "recipients": n})


async def queue_flush(request: web.Request) -> web.Response:
    token = await require_token(request, "operator")
    _params(request, "domain")
    domain = (await _body(request, "domain")).get("domain") or request.query.get("domain")
    if domain is not None and not isinstance(domain, str):
        raise json_error(web.HTTPBadRequest, "domain: expected a string")
    async with request.app["pool"].acquire() as conn:
        n = await ops.flush(conn, f"token:{token.name}", domain)
    return _json({"action": "flush", "domain": domain, "recipients": n})


async def rules_status(request: web.Request) -> web.Response:
    await require_token(request, "operator")
    _params(request)
    rules = request.app["hub"].rules
    return web.json_response(rules.status())


def setup(app: web.Application) -> None:
    app.add_routes([web.get("/api/directory/lookup", directory_lookup), web.get("/api/queue", queue_list),
                    web.get("/api/queue/summary", queue_shape), web.post("/api/queue/flush", queue_flush),
                    web.get("/api/queue/{id}", queue_show), web.get("/api/queue/{id}/content", queue_content),
                    web.post("/api/queue/{id}/{action}", queue_action),
                    web.get("/api/rules", rules_status)])
