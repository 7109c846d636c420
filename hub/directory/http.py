"""HTTP: GET /api/directory/lookup?q=...&limit=N (the lead mounts it behind the admin API's authentication).

Answers 200 `{"query": q, "results": [{"kind", "matched", ...fields}]}`, best matches first; 400
`{"error": ...}` for a missing, empty, too long or wordless query or a bad limit; 503 when the database cannot be
reached. Reads `request.app["pool"]` (asyncpg pool). Input trusted: none (see hub.directory.lookup).
"""

from __future__ import annotations

import datetime
import json

from aiohttp import web

from hub.db import UNAVAILABLE
from hub.directory import lookup as lookup_mod
from hub.errors import InputError


def _default(value):
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return str(value)


def _json(data, status: int = 200) -> web.Response:
    return web.json_response(data, status=status,
                             dumps=lambda d: json.dumps(d, ensure_ascii=False, default=_default))


async def lookup(request: web.Request) -> web.Response:
    q = request.query.get("q", "")
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        return _json({"error": "limit: expected an integer"}, 400)
    if not 1 <= limit <= 200:
        return _json({"error": "limit: expected 1 to 200"}, 400)
    try:
        async with request.app["pool"].acquire() as conn:
            matches = await lookup_mod.search(conn, q, limit=limit)
    except InputError as exc:
        return _json({"error": str(exc)}, 400)
    except UNAVAILABLE:
        return _json({"error": "directory temporarily unavailable"}, 503)
    return _json({"query": q, "results": [m.as_dict() for m in matches]})
