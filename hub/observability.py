"""Logging (structlog, JSON in production, bound to message_id) and every Prometheus metric, defined once.

Label values are bounded: reply codes, outcomes, sender account names, destination domains; never a full address
or a patient identifier. With several `hub serve` processes, metrics are aggregated through
prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by hub.app before the workers start).
"""

from __future__ import annotations

import logging
import sys

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
QUEUE_DEPTH = Gauge("hub_queue_recipients", "Recipients waiting, by state (sampled every few seconds)", ["state"],
                    multiprocess_mode="max")
RULES_VERSION = Gauge("hub_rules_version", "Active routing rule-set version", multiprocess_mode="max")
RULES_FAILED = Gauge("hub_rules_reload_failed", "1 while the rule files on disk are invalid (last good set kept)",
                     multiprocess_mode="max")
REVOCATION = Counter("hub_certificate_revocation_checks_total", "Certificate revocation verdicts (CRL)", ["status"])
PROCESSED = Counter("hub_messages_processed_total", "Messages through the processing stage", ["outcome"])


def configure_logging(json: bool = True, level: int = logging.INFO) -> None:
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=processors + [renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
