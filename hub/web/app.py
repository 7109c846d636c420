"""The HTTP listener: /healthz, /metrics (Prometheus), and the admin and audit API mounted by feature packages.

/healthz answers 200 with a JSON detail when the database answers a real query (2 s timeout, every request) and
the rule set is valid, else 503 with the reason (hub.health). Errors are JSON: {"error": "..."} with the HTTP status;
a NUL (`%00`) anywhere in the path or the query is a 400 before any handler runs, a value PostgreSQL refuses a 400,
anything unexpected a 500 without internals.
Settings read: http.listen.
"""

from __future__ import annotations

import os

import asyncpg
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from hub import health
from hub.db import UNAVAILABLE, UNSTORABLE

log = structlog.get_logger("hub.http")


def unstorable(request: web.Request) -> str | None:
    """What in the request's path or query holds text PostgreSQL cannot store (a NUL: `%00`), or None."""
    if UNSTORABLE.search(request.path):
        return "the path"
    for key, value in request.query.items():
        if UNSTORABLE.search(key) or UNSTORABLE.search(value):
            return f"parameter {key!r}"
    return None


@web.middleware
async def json_errors(request: web.Request, handler):
    bad = unstorable(request)
    if bad is not None:
        return web.json_response({"error": f"{bad} holds a NUL character (%00), which no value may contain"},
                                 status=400)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        return web.json_response({"error": exc.reason}, status=exc.status)
    except UNAVAILABLE:
        return web.json_response({"error": "database unavailable"}, status=503)
    except asyncpg.exceptions.DataError:          # a value PostgreSQL refuses: the request's, never retried as is
        log.info("http_bad_value", path=request.path)
        return web.json_response({"error": "a value in the request cannot be used"}, status=400)
    except Exception:
        log.exception("http_failed", path=request.path)
        return web.json_response({"error": "internal error (logged at the hub)"}, status=500)


async def healthz(request: web.Request) -> web.Response:
    """200 when PostgreSQL answers a real query within a short timeout and a rule set is active; else 503. The
    detail also says how fresh the trust list and the directory are (warnings do not fail the check) and, for
    the embedded PostgreSQL, what the supervisor knows (running / restarting)."""
    hub = request.app["hub"]
    detail: dict = {"process": os.getpid()}
    status = 200
    reason, queued = await health.probe(hub.pool)
    if reason is None:
        detail["database"] = "ok"
        detail["queue"] = queued
    else:
        detail["database"] = f"unavailable: {reason}"
        status = 503
    embedded = health.embedded_status(hub.settings)
    if embedded is not None:
        detail["embedded_postgresql"] = embedded
        if embedded.get("state") != "running":
            status = 503
    detail["trust_list"] = hub.trust.list_id
    detail["trust_domains"] = len(hub.trust)
    rules = getattr(hub, "rules", None)
    if rules is not None:
        detail["rules_version"] = getattr(getattr(rules, "current", None), "version", None)
        error = getattr(rules, "last_error", None)
        if error:
            detail["rules"] = f"last reload failed, keeping version {detail['rules_version']}: {error}"
            status = 503 if status == 200 and detail["rules_version"] is None else status
        else:
            detail["rules"] = "ok"
    sample = getattr(hub, "sample", None)
    if sample is not None:
        detail["queue_by_state"] = sample.queue
        detail["warnings"] = sample.warnings()
    if getattr(hub, "conformance_warning", None):     # CDAs produced with no ANS check: works, but say so
        detail.setdefault("warnings", []).append(hub.conformance_warning)
    if getattr(hub, "senders_warning", None):         # a sender profile that names no account
        detail.setdefault("warnings", []).append(hub.senders_warning)
    postmaster = health.postmaster_warning(hub.settings, hub.trust)
    if postmaster:                                     # works, but RFC 5321 wants postmaster accepted: say so
        detail.setdefault("warnings", []).append(postmaster)
    if hub.trust.list_id is None:
        detail["trust"] = "no authorised-domains list imported: only local destinations are deliverable"
    detail["status"] = "ok" if status == 200 else "failing"
    return web.json_response(detail, status=status)


async def metrics(request: web.Request) -> web.Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY as registry
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def build(hub, extra_setups=()) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=1024 * 1024)
    app["hub"] = hub
    app["pool"] = hub.pool
    app["settings"] = hub.settings
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    for setup in extra_setups:
        setup(app)
    return app
