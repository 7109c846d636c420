"""The operator's admin API (bearer token with the `operator` role): directory look-up, queue overview, rules
status. Errors are JSON with the HTTP status."""

from __future__ import annotations

from aiohttp import web

from hub.web.audit_api import require_token


async def directory_lookup(request: web.Request) -> web.StreamResponse:
    await require_token(request, "operator")
    from hub.directory import http

    return await http.lookup(request)


async def queue_summary(request: web.Request) -> web.Response:
    await require_token(request, "operator")
    async with request.app["pool"].acquire() as conn:
        rows = await conn.fetch("SELECT state, count(*) AS n FROM recipient GROUP BY state")
        held = await conn.fetch("SELECT id, account, received_at FROM message WHERE state IN ('held', 'dead')"
                                " ORDER BY received_at DESC LIMIT 100")
    return web.json_response({"recipients": {r["state"]: r["n"] for r in rows},
                              "held_or_dead": [{"id": r["id"], "account": r["account"],
                                                "received_at": r["received_at"].isoformat()} for r in held]})


async def rules_status(request: web.Request) -> web.Response:
    await require_token(request, "operator")
    rules = request.app["hub"].rules
    return web.json_response(rules.status())


def setup(app: web.Application) -> None:
    app.add_routes([web.get("/api/directory/lookup", directory_lookup), web.get("/api/queue", queue_summary),
                    web.get("/api/rules", rules_status)])
