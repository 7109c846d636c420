"""Typed settings, read once from the TOML file and `HUB_*` environment variables, failing fast with the key name.

Precedence: defaults < TOML file (`--config FILE` or `HUB_CONFIG`) < environment. An environment variable is
`HUB_<SECTION>_<KEY>` in upper case, e.g. `HUB_DATABASE_URL`, `HUB_SMTP_LISTEN`, `HUB_DELIVERY_CA_FILE` (for the
[hub] section also `HUB_DATA_DIR`, `HUB_DOMAINS`...); lists are comma-separated, tables `key=value,key=value`. Every key is documented with its default in `deploy/hub.example.toml`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.errors import ConfigError


@dataclass(frozen=True)
class HubSection:
    data_dir: str = "./var"
    domains: list[str] = field(default_factory=lambda: ["hub.example.org"])
    # X-MSS-NIL: the software reference ("référence produit") stamped on every message
    nil: str = "HUB-REGIONAL"
    # number of `hub serve` processes sharing the SMTP port and the queue; 0 = one per core
    processes: int = 0


@dataclass(frozen=True)
class DatabaseSection:
    url: str = ""                      # empty: embedded PostgreSQL under data_dir/pg
    pool_min: int = 2
    pool_max: int = 10
    connect_timeout: float = 5.0
    command_timeout: float = 30.0


@dataclass(frozen=True)
class SmtpSection:
    listen: str = "127.0.0.1:2525"
    hostname: str = "hub.example.org"
    tls_cert: str = ""
    tls_key: str = ""
    # CA file used to verify establishments' client certificates (optional; enables certificate login)
    client_ca_file: str = ""
    max_message_size: int = 31457280
    max_recipients: int = 100
    max_header_size: int = 262144        # bytes of header section; more, or a line over 998 characters: 554 5.6.0
    max_header_fields: int = 1000
    auth_failures_per_minute: int = 10   # per peer IP across every process sharing the database, then 421
    session_timeout: float = 300.0
    max_connections: int = 500           # per process


@dataclass(frozen=True)
class HttpSection:
    listen: str = "127.0.0.1:8025"


@dataclass(frozen=True)
class DeliverySection:
    client_cert: str = ""
    client_key: str = ""
    ca_file: str = ""
    # domain -> "host:port" static next hops (Postfix transport map); else DNS MX
    transport: dict[str, str] = field(default_factory=dict)
    # next hop -> "verify" (default, mutual TLS verified), "encrypt" (TLS, unverified), "none" (plain);
    # relaxing is refused for trust-space domains (see hub.delivery.nexthop)
    tls_policy: dict[str, str] = field(default_factory=dict)
    # domains declared outside the trust space (local archive, print service, benchmark sink)
    local_domains: list[str] = field(default_factory=list)
    strict_operator_dn: bool = False
    connect_timeout: float = 30.0
    command_timeout: float = 120.0
    per_destination_concurrency: int = 20
    workers: int = 50                     # concurrent delivery tasks per process
    batch_size: int = 100
    lease_seconds: int = 300
    poll_interval: float = 1.0


@dataclass(frozen=True)
class QueueSection:
    first_retry: int = 300                # seconds (Postfix minimal_backoff_time)
    max_retry_interval: int = 4000        # seconds (Postfix maximal_backoff_time)
    max_lifetime: int = 432000            # 5 days (Postfix maximal_queue_lifetime)
    delay_warning: int = 14400            # 4 hours; 0 disables delay notices
    max_recoveries: int = 5               # a message recovered this many times from a crash goes to dead


@dataclass(frozen=True)
class DirectorySection:
    resolution_domain: str = ""          # default: "rpps." + first hub domain
    unresolved: str = "reject"           # "reject" at RCPT time, or "fallback" to the account's fallback mailbox
    # an import is refused when more than this fraction of its lines (and more than 10) are malformed
    max_rejected_ratio: float = 0.01
    # an import is refused when it would remove more than this fraction of the current entries (--force overrides)
    max_shrink_ratio: float = 0.5


@dataclass(frozen=True)
class TrustSection:
    # `hub trust import` refuses a list that removes more than this fraction of the current domains (--force)
    max_removed_ratio: float = 0.05


@dataclass(frozen=True)
class RevocationSection:
    # check trust-space peers' certificates (delivery) and establishments' client certificates against their CRLs
    check: bool = True
    crl_urls: list[str] = field(default_factory=list)   # CRLs fetched besides the certificates' distribution points
    refresh_interval: float = 3600.0     # seconds; each CRL is also fetched again ahead of its nextUpdate
    retry_interval: float = 300.0        # seconds between attempts while a CRL cannot be fetched
    fetch_timeout: float = 15.0
    unavailable: str = "defer"           # CRL unusable (fetch failed, expired, bad signature): defer | accept
    uncovered: str = "accept"            # no CRL for the certificate at all: accept | defer


@dataclass(frozen=True)
class RulesSection:
    dir: str = "./routing_rules"
    watch: bool = True
    watch_interval: float = 2.0


@dataclass(frozen=True)
class TransformSection:
    cda_schema: str = ""                 # path to CDA_extended.xsd; empty: no schema validation
    loinc_map: str = ""                  # CSV local code -> LOINC
    hub_oid: str = "1.2.250.1.999.1"     # the hub's OID (XDM sourceId, generated document ids)
    max_zip_entries: int = 100
    max_zip_expanded: int = 104857600
    max_xml_depth: int = 256
    schematron_dir: str = ""             # the ANS `schematrons` folder: every produced CDA is checked; empty: no check
    schematron_processes: int = 1        # hub serve: validator processes per group of sets, shared by the workers
    value_sets: list[str] = field(default_factory=list)   # ANS value-set folders/files; empty: beside schematron_dir
    on_nonconformant: str = "hold"       # a produced CDA failing an ANS assertion: hold (not sent) or warn (sent)
    senders: str = ""                    # TOML file of sender profiles (FINESS, name, INS policy...) per account


@dataclass(frozen=True)
class AuditSection:
    patient_key_file: str = ""           # secret key for hashing INS; default data_dir/audit.key (created 0600)
    body_retention_days: int = 30
    event_retention_days: int = 183
    purge_interval: float = 3600.0
    partitions_ahead: int = 2            # monthly audit partitions created ahead of time
    seal_interval: float = 2.0           # seconds between sealing rounds (hub.audit.chain)
    seal_batch: int = 50000              # events per seal block at most
    page_size: int = 50                  # default search page (HTTP and CLI)


@dataclass(frozen=True)
class Settings:
    hub: HubSection = field(default_factory=HubSection)
    database: DatabaseSection = field(default_factory=DatabaseSection)
    smtp: SmtpSection = field(default_factory=SmtpSection)
    http: HttpSection = field(default_factory=HttpSection)
    delivery: DeliverySection = field(default_factory=DeliverySection)
    queue: QueueSection = field(default_factory=QueueSection)
    directory: DirectorySection = field(default_factory=DirectorySection)
    trust: TrustSection = field(default_factory=TrustSection)
    revocation: RevocationSection = field(default_factory=RevocationSection)
    rules: RulesSection = field(default_factory=RulesSection)
    transform: TransformSection = field(default_factory=TransformSection)
    audit: AuditSection = field(default_factory=AuditSection)
    source: str = ""                     # the file read, for messages

    @property
    def data_dir(self) -> Path:
        return Path(self.hub.data_dir)

    @property
    def resolution_domain(self) -> str:
        return (self.directory.resolution_domain or f"rpps.{self.hub.domains[0]}").lower()

    def replace(self, **sections: Any) -> "Settings":
        return dataclasses.replace(self, **sections)


def _coerce(key: str, value: Any, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    if kind is bool:
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
        elif isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    elif origin is dict:
        if isinstance(value, str):   # env form: "a=b,c=d"
            pairs = [p for p in value.split(",") if p.strip()]
            if all("=" in p for p in pairs):
                return {k.strip(): v.strip() for k, v in (p.split("=", 1) for p in pairs)}
        if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            return dict(value)
    raise ConfigError(f"setting {key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")


def _section_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def toml_text(data: bytes, path: str | os.PathLike) -> dict[str, Any]:
    """A TOML file's bytes -> tables; a byte that is not UTF-8 is a ConfigError naming its line (a BOM, as Windows
    editors write, is skipped)."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (a TOML file is UTF-8)") from None
    return tomllib.loads(text)


def load(path: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> Settings:
    """Read the TOML file (if any) and the environment; raise ConfigError naming the bad key."""
    env = dict(os.environ if env is None else env)
    path = path or env.get("HUB_CONFIG") or None
    raw: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                raw = toml_text(fh.read(), path)
        except FileNotFoundError:
            raise ConfigError(f"{path}: configuration file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    top_types = _section_types(Settings)
    sections: dict[str, Any] = {}
    for name, kind in top_types.items():
        if name == "source":
            continue
        types = _section_types(kind)
        given = raw.get(name, {})
        if not isinstance(given, dict):
            raise ConfigError(f"{path}: [{name}] must be a table")
        values: dict[str, Any] = {}
        for key, value in given.items():
            if key not in types:
                raise ConfigError(f"{path}: unknown setting {name}.{key}")
            values[key] = _coerce(f"{name}.{key}", value, types[key])
        for key, kind_ in types.items():
            env_name = f"HUB_{name}_{key}".upper()
            short = f"HUB_{key}".upper() if name == "hub" else None     # HUB_DATA_DIR, HUB_DOMAINS, ...
            if env_name in env:
                values[key] = _coerce(env_name, env[env_name], kind_)
            elif short and short in env:
                values[key] = _coerce(short, env[short], kind_)
        sections[name] = kind(**values)
    unknown = set(raw) - set(top_types)
    if unknown:
        raise ConfigError(f"{path}: unknown section [{sorted(unknown)[0]}]")
    _check_environment(env, top_types)
    settings = Settings(**sections, source=str(path or ""))
    _validate(settings)
    return settings


# HUB_* variables read elsewhere, not settings
_OTHER_VARIABLES = frozenset({"HUB_CONFIG", "HUB_DATABASE_ADMIN_URL"})


def _check_environment(env: dict[str, str], top_types: dict[str, Any]) -> None:
    """A variable named like a setting of a section (`HUB_DATABASE_URl`, `HUB_SMTP_LISTN`) that is none: a typo in
    hub.env would otherwise run the hub silently without it (an embedded database instead of the server).
    Other HUB_* variables (another program's) are not the hub's business."""
    sections = {name.upper(): kind for name, kind in top_types.items() if name != "source"}
    for var in env:
        head, _, rest = var.partition("_")
        section, _, key = rest.partition("_")
        if head.upper() != "HUB" or section.upper() not in sections or not key or var in _OTHER_VARIABLES:
            continue
        keys = {k.upper() for k in _section_types(sections[section.upper()])}
        if head != "HUB" or section != section.upper() or key not in keys:
            wanted = f"HUB_{section.upper()}_{key.upper()}"
            hint = f" (did you mean {wanted}?)" if key.upper() in keys else ""
            raise ConfigError(f"environment variable {var}: no such setting in [{section.lower()}]{hint}")


def _validate(s: Settings) -> None:
    for key, listen in (("smtp.listen", s.smtp.listen), ("http.listen", s.http.listen)):
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"setting {key}: expected host:port, got {listen!r}")
        if int(port) > 65535:
            raise ConfigError(f"setting {key}: port {port} is out of range (0-65535) in {listen!r}")
    if bool(s.smtp.tls_cert) != bool(s.smtp.tls_key):
        raise ConfigError("settings smtp.tls_cert and smtp.tls_key go together")
    if bool(s.delivery.client_cert) != bool(s.delivery.client_key):
        raise ConfigError("settings delivery.client_cert and delivery.client_key go together")
    for dest, policy in s.delivery.tls_policy.items():
        if policy not in ("verify", "encrypt", "none"):
            raise ConfigError(f"setting delivery.tls_policy.{dest}: expected verify, encrypt or none, got {policy!r}")
    for domain, hop in s.delivery.transport.items():
        host, _, port = hop.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ConfigError(f"setting delivery.transport.{domain}: expected host:port, got {hop!r}")
    if s.directory.unresolved not in ("reject", "fallback"):
        raise ConfigError(f"setting directory.unresolved: expected reject or fallback, got {s.directory.unresolved!r}")
    if not s.hub.domains:
        raise ConfigError("setting hub.domains: at least one domain is needed")
    r = s.revocation
    if r.unavailable not in ("defer", "accept"):
        raise ConfigError(f"setting revocation.unavailable: expected defer or accept, got {r.unavailable!r}")
    if r.uncovered not in ("accept", "defer"):
        raise ConfigError(f"setting revocation.uncovered: expected accept or defer, got {r.uncovered!r}")
    for url in r.crl_urls:
        if not url.lower().startswith(("http://", "https://")):
            raise ConfigError(f"setting revocation.crl_urls: expected http:// or https:// URLs, got {url!r}")
    if s.transform.on_nonconformant not in ("hold", "warn"):
        raise ConfigError(f"setting transform.on_nonconformant: expected hold or warn, got "
                          f"{s.transform.on_nonconformant!r}")
    _validate_numbers(s)
    for key, names in (("hub.domains", s.hub.domains), ("delivery.local_domains", s.delivery.local_domains),
                       ("smtp.hostname", [s.smtp.hostname]), ("delivery.transport", list(s.delivery.transport))):
        for name in names:
            if not _DOMAIN.fullmatch(name):
                raise ConfigError(f"setting {key}: {name!r} is not a domain name")
    if s.database.pool_min > s.database.pool_max:
        raise ConfigError(f"settings database.pool_min ({s.database.pool_min}) and database.pool_max "
                          f"({s.database.pool_max}): the minimum is larger than the maximum")


_DOMAIN = re.compile(r"(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                     r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# the smallest value each number may take (every other numeric setting: 0); NaN and infinity are never a setting
_MINIMUM = {"database.pool_max": 1, "smtp.max_message_size": 1, "smtp.max_recipients": 1,
            "smtp.max_header_size": 1, "smtp.max_header_fields": 1, "smtp.auth_failures_per_minute": 1,
            "delivery.per_destination_concurrency": 1, "delivery.workers": 1, "delivery.batch_size": 1,
            "delivery.lease_seconds": 1, "queue.first_retry": 1, "queue.max_retry_interval": 1,
            "queue.max_lifetime": 1, "transform.max_zip_entries": 1, "transform.max_zip_expanded": 1,
            "transform.max_xml_depth": 1, "audit.event_retention_days": 1, "audit.seal_batch": 1,
            "audit.page_size": 1, "transform.schematron_processes": 1}
# the largest page a search returns; validator processes per group (each holds the compiled ANS rules)
_MAXIMUM = {"audit.page_size": 10000, "transform.schematron_processes": 32}


def _validate_numbers(s: Settings) -> None:
    """Every number in range: a negative count, a zero timeout or a NaN would start a hub that serves nothing,
    spins, or never times out. Float settings are seconds (more than 0) or ratios (`*_ratio`, 0 to 1)."""
    for section in dataclasses.fields(Settings):
        if section.name == "source":
            continue
        values = getattr(s, section.name)
        for name, kind in _section_types(type(values)).items():
            value, key = getattr(values, name), f"{section.name}.{name}"
            if kind not in (int, float) or isinstance(value, bool):
                continue
            if kind is float and not math.isfinite(value):
                raise ConfigError(f"setting {key}: expected a finite number, got {value!r}")
            if kind is float and name.endswith("_ratio"):
                if not 0 <= value <= 1:
                    raise ConfigError(f"setting {key}: expected 0 to 1, got {value!r}")
            elif kind is float and value <= 0:
                raise ConfigError(f"setting {key}: expected a number of seconds above 0, got {value!r}")
            elif not _MINIMUM.get(key, 0) <= value <= _MAXIMUM.get(key, value):
                raise ConfigError(f"setting {key}: expected {_MINIMUM.get(key, 0)} to {_MAXIMUM[key]}, got {value!r}"
                                  if key in _MAXIMUM else
                                  f"setting {key}: expected at least {_MINIMUM.get(key, 0)}, got {value!r}")


def split_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)
