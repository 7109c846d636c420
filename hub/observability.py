"""Logging (structlog, JSON in production, bound to message_id) and every Prometheus metric, defined once.

Label values are bounded: reply codes, outcomes, sender account names, destination domains; never a full address
or a patient identifier. With several `hub serve` processes, metrics are aggregated through
prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by hub.app before the workers start); the
sampled gauges count live processes only (a restarted worker's stale values are dropped, `process_dead`).
"""

from __future__ import annotations

import logging
import sys
import threading

import structlog
from prometheus_client import Counter, Gauge, Histogram

SMTP_SESSIONS = Counter("hub_smtp_sessions_total", "SMTP connections accepted")
SMTP_REPLIES = Counter("hub_smtp_replies_total", "SMTP replies to MAIL/RCPT/DATA by code", ["code"])
AUTH = Counter("hub_smtp_auth_total", "SMTP authentication attempts", ["result"])
RECEIVED = Counter("hub_messages_received_total", "Messages accepted (committed)", ["account"])
INTAKE_SECONDS = Histogram("hub_intake_seconds", "DATA end to 250 (commit included)",
                           buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
DELIVERIES = Counter("hub_deliveries_total", "Delivery outcomes per recipient", ["outcome"])
DELIVERY_SECONDS = Histogram("hub_delivery_seconds", "One SMTP transaction to a next hop",
                             buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30))
NOTIFICATIONS = Counter("hub_notifications_total", "Delivery status notifications generated", ["kind"])
DEAD = Counter("hub_messages_dead_total", "Messages moved to the dead state", ["stage"])
QUEUE_DEPTH = Gauge("hub_queue_recipients", "Recipients waiting (pending, queued, deferred, held) or dead, by state"
                    " (sampled every few seconds; deferred: queued after a failed attempt)", ["state"],
                    multiprocess_mode="livemax")
RULES_VERSION = Gauge("hub_rules_version", "Active routing rule-set version", multiprocess_mode="livemax")
RULES_FAILED = Gauge("hub_rules_reload_failed", "1 while the rule files on disk are invalid (last good set kept)",
                     multiprocess_mode="livemax")
CONFORMANCE_UNCHECKED = Gauge("hub_transform_conformance_unchecked", "1 while the active rules use a chain that "
                              "produces a CDA and transform.schematron_dir is empty (no ANS check)",
                              multiprocess_mode="livemax")
REVOCATION = Counter("hub_certificate_revocation_checks_total", "Certificate revocation verdicts (CRL)", ["status"])
PROCESSED = Counter("hub_messages_processed_total", "Messages through the processing stage", ["outcome"])
TRANSFORM_FAILED = Counter("hub_transform_failures_total", "Transformations that could not produce a valid document,"
                           " by chain and what was done (on_invalid)", ["chain", "decision"])
DELIVERY_DOMAINS = Counter("hub_delivery_domain_outcomes_total", "Delivery outcomes per destination domain (at most"
                           " 200 domains per process, the rest as \"other\")", ["domain", "outcome"])
QUEUE_OLDEST = Gauge("hub_queue_oldest_seconds", "Age of the oldest message having recipients in this state",
                     ["state"], multiprocess_mode="livemax")
CERT_EXPIRY = Gauge("hub_certificate_expiry_timestamp_seconds", "When a configured certificate expires (Unix time;"
                    " the earliest of a CA file)", ["setting"], multiprocess_mode="max")
TRUST_LIST_IMPORTED = Gauge("hub_trust_list_imported_timestamp_seconds", "When the current authorised-domains list"
                            " was imported (Unix time; 0: none)", multiprocess_mode="livemax")
TRUST_LIST_GENERATED = Gauge("hub_trust_list_generated_timestamp_seconds", "Generation date of the current"
                             " authorised-domains list (Unix time; 0: none)", multiprocess_mode="livemax")
DIRECTORY_IMPORTED = Gauge("hub_directory_imported_timestamp_seconds", "When the directory was last imported"
                           " (Unix time; 0: never), by source", ["source"], multiprocess_mode="livemax")
AUDIT_UNSEALED = Gauge("hub_audit_unsealed_events", "Audit events not yet hash-chained by the sealer",
                       multiprocess_mode="livemax")
AUDIT_SEAL_LAG = Gauge("hub_audit_seal_lag_seconds", "Age of the oldest audit event not yet sealed (0: none)",
                       multiprocess_mode="livemax")
DATABASE_UP = Gauge("hub_database_up", "1 when the last probe of PostgreSQL (every few seconds) answered",
                    multiprocess_mode="livemin")
DATABASE_RESTARTS = Counter("hub_database_restarts_total", "Restarts of the embedded PostgreSQL by the supervisor",
                            ["result"])
PROCESS_RESTARTS = Counter("hub_process_restarts_total", "Hub worker processes restarted by the supervisor")
BUILD_INFO = Gauge("hub_build_info", "Always 1; the labels say which hub runs", ["version", "python"],
                   multiprocess_mode="max")

MAX_DOMAIN_LABELS = 200
_domain_labels: set[str] = set()


def domain_label(domain: str) -> str:
    """The destination domain as a metric label: the first MAX_DOMAIN_LABELS distinct domains of this process
    keep their name (deliveries only go to authorised domains, so this is rarely reached), the rest are "other"."""
    domain = (domain or "").lower()
    if domain in _domain_labels:
        return domain
    if len(_domain_labels) < MAX_DOMAIN_LABELS:
        _domain_labels.add(domain)
        return domain
    return "other"


def delivery_outcome(domain: str, outcome: str) -> None:
    DELIVERIES.labels(outcome).inc()
    DELIVERY_DOMAINS.labels(domain_label(domain), outcome).inc()


def initialise() -> None:
    """Create the series of every bounded label value at 0, so dashboards and alerts see them before the first
    event (an `increase()` over a series that does not exist yet is empty, not 0)."""
    import platform
    from importlib import metadata

    try:
        version = metadata.version("hub")
    except metadata.PackageNotFoundError:
        version = "unknown"
    BUILD_INFO.labels(version, platform.python_version()).set(1)
    for outcome in ("delivered", "temporary", "permanent", "dead"):
        DELIVERIES.labels(outcome)
    for stage in ("processing", "delivery"):
        DEAD.labels(stage)
    for outcome in ("ok", "dead"):
        PROCESSED.labels(outcome)
    for result in ("ok", "failed", "blocked"):
        AUTH.labels(result)
    for kind in ("failure", "delay", "success"):
        NOTIFICATIONS.labels(kind)
    for code in ("250", "451", "550"):
        SMTP_REPLIES.labels(code)
    for result in ("ok", "failed"):
        DATABASE_RESTARTS.labels(result)
    PROCESS_RESTARTS.inc(0)


def process_dead(pid: int) -> None:
    """Forget a dead worker's live gauges (its counters stay counted): called by the supervisor when it reaps one."""
    import os

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def set_certificates(infos) -> None:
    for info in infos:
        CERT_EXPIRY.labels(info.setting).set(info.not_after.timestamp())


class _UnparsableRequests(logging.Filter):
    """aiohttp logs an HTTP request it cannot parse (a request line over 8 KB, raw bytes outside ASCII) with its
    traceback and the request line, whose query string may hold a patient's INS: one warning naming the error's
    class and status instead, never the request."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"http_bad_request: {type(exc).__name__} (status {getattr(exc, 'code', 400)})"
            record.args, record.exc_info, record.exc_text = (), None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class _LineLogger:
    """structlog's output: each record and its newline in ONE write. structlog's PrintLogger `print()`s, which writes
    the text and the newline separately; with PYTHONUNBUFFERED=1 (as container images often set) each is its own
    system call, so the line of one process could land between another's record and its newline in the log the
    supervisor and its workers share: two records on one line, which a JSON-lines reader rejects."""

    def __init__(self, file) -> None:
        self._file = file
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock:
            self._file.write(message + "\n")
            self._file.flush()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def configure_logging(json: bool = True, level: int = logging.INFO) -> None:
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    # the libraries' own log records (aiosmtpd, asyncio, aiohttp) and Python warnings: the same format, same stream
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *processors],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _UnparsableRequests) for f in server.filters):
        server.addFilter(_UnparsableRequests())
    structlog.configure(
        processors=processors + [renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=lambda *_: _LineLogger(sys.stderr),
        cache_logger_on_first_use=True,
    )
