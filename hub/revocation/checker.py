"""The revocation checker: CRLs in memory (verified), verdicts for certificates, the fetch and reload loop.

Pure parts (`parse_crl`, `judge`, `next_fetch`) take their inputs as arguments; `RevocationChecker` holds the
per-process view and does the I/O (PostgreSQL through hub.revocation.store, HTTP through aiohttp).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import asyncpg
import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from hub import observability as obs
from hub.audit.store import Event, record
from hub.db import UNAVAILABLE
from hub.errors import ConfigError
from hub.revocation import store

log = structlog.get_logger("hub.revocation")

MAX_CRL_BYTES = 50 * 1024 * 1024        # the IGC-Santé CRLs are far smaller
FETCH_BATCH = 10                         # URLs claimed per round


class CrlError(Exception):
    """A CRL that cannot be used: the reason, for the operator and the audit trail."""


@dataclass(frozen=True)
class Crl:
    """A CRL whose signature verified against its issuer's certificate."""
    url: str
    issuer: bytes                        # DER of the issuer name
    issuer_text: str
    this_update: datetime
    next_update: datetime | None
    revoked: dict[int, tuple[datetime, str | None]]
    sha256: str


@dataclass
class Source:
    """What this process knows of one URL: the last good CRL (if any) and the last fetch error (if any)."""
    url: str
    configured: bool = False
    crl: Crl | None = None
    error: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Verdict:
    status: str                          # good | revoked | unknown | uncovered | off
    reason: str
    url: str | None = None


@dataclass(frozen=True)
class Decision:
    action: str                          # accept | defer | refuse
    verdict: Verdict


def load_issuers(paths) -> dict[bytes, list[x509.Certificate]]:
    """CA certificates by subject (DER), from PEM files: the only keys a CRL signature may verify against."""
    out: dict[bytes, list[x509.Certificate]] = {}
    for path in paths:
        if not path:
            continue
        try:
            certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read CA certificates for CRL checks: {exc}") from None
        for cert in certs:
            out.setdefault(cert.subject.public_bytes(), []).append(cert)
    return out


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.crl_sign:
            return False
    except x509.ExtensionNotFound:
        pass
    try:
        return crl.is_signature_valid(ca.public_key())
    except (TypeError, ValueError, InvalidSignature, UnsupportedAlgorithm):
        return False


def parse_crl(url: str, data: bytes, issuers: dict[bytes, list[x509.Certificate]]) -> Crl:
    """A verified CRL from DER or PEM bytes, or CrlError saying why it cannot be used."""
    try:
        crl = x509.load_der_x509_crl(data)
    except ValueError:
        try:
            crl = x509.load_pem_x509_crl(data)
        except ValueError:
            raise CrlError("not a CRL (neither DER nor PEM)") from None
    issuer = crl.issuer.public_bytes()
    name = crl.issuer.rfc4514_string()
    candidates = issuers.get(issuer)
    if not candidates:
        raise CrlError(f"issued by {name}, which is not among the configured CA certificates")
    if not any(_signed_by(crl, ca) for ca in candidates):
        raise CrlError(f"signature does not verify against the certificate of {name}")
    try:
        crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
        raise CrlError("a delta CRL (not supported: publish the full CRL)")
    except x509.ExtensionNotFound:
        pass
    revoked: dict[int, tuple[datetime, str | None]] = {}
    for entry in crl:
        try:
            reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.name
        except x509.ExtensionNotFound:
            reason = None
        revoked[entry.serial_number] = (entry.revocation_date_utc, reason)
    return Crl(url, issuer, name, crl.last_update_utc, crl.next_update_utc, revoked, hashlib.sha256(data).hexdigest())


def distribution_points(cert: x509.Certificate) -> list[str]:
    """The certificate's CRL distribution points the hub can fetch (http and https URLs)."""
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    urls = []
    for point in points:
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.lower().startswith(
                    ("http://", "https://")):
                urls.append(name.value)
    return urls


def judge(cert: x509.Certificate, urls: list[str], sources: dict[str, Source], now: datetime) -> Verdict:
    """The revocation status of `cert` given the CRL sources known (pure)."""
    issuer = cert.issuer.public_bytes()
    if urls:
        named = [sources.get(u) or Source(u) for u in urls]
    else:
        named = [s for s in sources.values() if s.configured and s.crl is not None and s.crl.issuer == issuer]
        if not named:
            broken = [s for s in sources.values() if s.configured and s.crl is None]
            if broken:
                return Verdict("unknown", f"CRL {broken[0].url} could not be fetched ({broken[0].error or 'not yet'}):"
                               " it may cover this certificate", broken[0].url)
            return Verdict("uncovered", "the certificate names no CRL distribution point and no CRL is configured for"
                           f" its issuer {cert.issuer.rfc4514_string()}")
    usable: list[Crl] = []
    problems: list[tuple[str, str]] = []
    for s in named:
        crl = s.crl
        if crl is None:
            problems.append((s.url, f"could not be fetched ({s.error or 'not yet fetched'})"))
        elif crl.issuer != issuer:
            problems.append((s.url, f"is issued by {crl.issuer_text}, not by the certificate's issuer"))
        elif crl.next_update is not None and now >= crl.next_update:
            problems.append((s.url, f"expired at {crl.next_update:%Y-%m-%d %H:%M} UTC and could not be refreshed"
                                    f" ({s.error or 'no newer CRL published yet'})"))
        else:
            usable.append(crl)
    serial = cert.serial_number
    for crl in usable:
        hit = crl.revoked.get(serial)
        if hit is not None:
            when, why = hit
            return Verdict("revoked", f"certificate serial {serial:#x} revoked on {when:%Y-%m-%d %H:%M} UTC"
                           f"{f' ({why})' if why else ''} per CRL {crl.url}", crl.url)
    if usable:
        return Verdict("good", f"not revoked per CRL {usable[0].url} of {usable[0].this_update:%Y-%m-%d %H:%M} UTC",
                       usable[0].url)
    url, why = problems[0]
    return Verdict("unknown", f"revocation status unknown: CRL {url} {why}", url)


def next_fetch(now: datetime, crl: Crl | None, refresh: float, retry: float) -> datetime:
    """When to fetch a CRL again: every `refresh` seconds, and ahead of its nextUpdate by a quarter of its validity
    (at most `refresh`), but never sooner than `retry` seconds from now."""
    due = now + timedelta(seconds=refresh)
    if crl is not None and crl.next_update is not None:
        ahead = min(timedelta(seconds=refresh), (crl.next_update - crl.this_update) / 4)
        due = min(due, max(crl.next_update - ahead, now + timedelta(seconds=retry)))
    return due


class RevocationChecker:
    """One hub process's view of the CRLs and the policy that turns verdicts into decisions."""

    def __init__(self, settings, pool: asyncpg.Pool | None):
        self.policy = settings.revocation
        self.pool = pool
        self.sources: dict[str, Source] = {}
        self.issuers = load_issuers([settings.delivery.ca_file, settings.smtp.client_ca_file]) \
            if self.policy.check else {}
        self._learning: dict[str, asyncio.Future] = {}
        self._http: aiohttp.ClientSession | None = None

    # ---- verdicts --------------------------------------------------------------------------------------------
    async def check(self, der: bytes) -> Decision:
        """The decision for a certificate (DER), learning (fetching at once) the CRL URLs it names first."""
        if not self.policy.check:
            return Decision("accept", Verdict("off", "revocation checking is off (revocation.check)"))
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            return self._decide(Verdict("unknown", "the certificate cannot be read for its revocation status"))
        urls = distribution_points(cert)
        missing = [u for u in urls if u not in self.sources]
        if missing:
            try:
                await asyncio.gather(*(self._learn(u) for u in missing))
            except Exception:        # whatever could not be learned makes the verdict "unknown" below
                log.exception("crl_learn_failed", urls=missing)
        verdict = judge(cert, urls, self.sources, datetime.now(timezone.utc))
        return self._decide(verdict)

    def _decide(self, verdict: Verdict) -> Decision:
        obs.REVOCATION.labels(verdict.status).inc()
        if verdict.status == "revoked":
            action = "refuse"
        elif verdict.status == "unknown":
            action = "defer" if self.policy.unavailable == "defer" else "accept"
        elif verdict.status == "uncovered":
            action = "defer" if self.policy.uncovered == "defer" else "accept"
        else:
            action = "accept"
        if verdict.status in ("revoked", "unknown") or action != "accept":
            log.warning("certificate_revocation", status=verdict.status, action=action, reason=verdict.reason)
        return Decision(action, verdict)

    # ---- sources: learn, fetch, store, reload ---------------------------------------------------------------
    async def start(self) -> None:
        """The configured URLs, and what the database holds already."""
        if not self.policy.check or self.pool is None:
            return
        async with self.pool.acquire() as conn:
            if self.policy.crl_urls:
                await store.ensure(conn, list(self.policy.crl_urls), configured=True)
        await self.reload()

    async def _learn(self, url: str) -> None:
        """A URL seen for the first time in this process: from the database if another process has it, else
        fetched now (one fetch per URL in this process at a time)."""
        running = self._learning.get(url)
        if running is None:
            running = self._learning[url] = asyncio.ensure_future(self._learn_now(url))
            running.add_done_callback(lambda _f: self._learning.pop(url, None))
        await asyncio.shield(running)

    async def _learn_now(self, url: str) -> None:
        try:
            async with self.pool.acquire() as conn:
                await store.ensure(conn, [url], configured=False, hold=self.policy.fetch_timeout * 2)
            await self.reload([url])
            source = self.sources.get(url)
            if source is None or (source.crl is None and source.error is None):
                await self.fetch(url)
        except UNAVAILABLE as exc:
            self.sources.setdefault(url, Source(url)).error = f"database unavailable ({type(exc).__name__})"

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch what is due (any process may: rows are claimed), reload what others stored; until `stop`."""
        if not self.policy.check or self.pool is None:
            return
        tick = min(10.0, self.policy.retry_interval)
        try:
            while not stop.is_set():
                try:
                    await self.fetch_due()
                    await self.reload()
                except UNAVAILABLE as exc:
                    log.warning("crl_refresh_unavailable", error=type(exc).__name__)
                except Exception:       # a bug must not stop revocation checking: log, carry on
                    log.exception("crl_refresh_failed")
                try:
                    await asyncio.wait_for(stop.wait(), tick)
                except asyncio.TimeoutError:
                    pass
        finally:
            await self.close()

    async def fetch_due(self) -> list[tuple[str, str | None]]:
        """Fetch every due URL (claimed so that one process does each); (url, error or None) for each."""
        async with self.pool.acquire() as conn:
            rows = await store.claim_due(conn, FETCH_BATCH, self.policy.fetch_timeout * 2)
        return [(r["url"], await self.fetch(r["url"])) for r in rows]

    async def fetch(self, url: str) -> str | None:
        """Fetch, verify and store one CRL (the audit trail records a change, or the first failure); the error
        or None."""
        now = datetime.now(timezone.utc)
        try:
            data = await self._download(url)
            crl = parse_crl(url, data, self.issuers)
        except CrlError as exc:
            error = str(exc)[:500]
            log.warning("crl_fetch_failed", url=url, error=error)
            async with self.pool.acquire() as conn:
                async with conn.transaction():
                    first = await store.store_failure(conn, url, error,
                                                      now + timedelta(seconds=self.policy.retry_interval))
                    if first:
                        await record(conn, Event("crl_fetch_failed", facts={"url": url, "error": error}))
            self.sources.setdefault(url, Source(url)).error = error
            return error
        due = next_fetch(now, crl, self.policy.refresh_interval, self.policy.retry_interval)
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                changed = await store.store_good(conn, url, data, crl.sha256, crl.issuer_text, crl.this_update,
                                                 crl.next_update, len(crl.revoked), due)
                if changed:
                    await record(conn, Event("crl_updated", facts={
                        "url": url, "issuer": crl.issuer_text, "this_update": crl.this_update.isoformat(),
                        "next_update": crl.next_update.isoformat() if crl.next_update else None,
                        "entries": len(crl.revoked), "sha256": crl.sha256}))
        source = self.sources.setdefault(url, Source(url))
        source.crl, source.error, source.sha256 = crl, None, crl.sha256
        log.info("crl_fetched", url=url, entries=len(crl.revoked), changed=changed)
        return None

    async def _download(self, url: str) -> bytes:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        try:
            async with self._http.get(url, timeout=aiohttp.ClientTimeout(total=self.policy.fetch_timeout),
                                      allow_redirects=True, max_redirects=3) as resp:
                if resp.status != 200:
                    raise CrlError(f"HTTP {resp.status} from {url}")
                data = bytearray()
                async for chunk in resp.content.iter_chunked(1 << 16):
                    data += chunk
                    if len(data) > MAX_CRL_BYTES:
                        raise CrlError(f"larger than {MAX_CRL_BYTES} bytes")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            raise CrlError(f"cannot fetch {url}: {type(exc).__name__}: {exc}"[:300]) from None
        return bytes(data)

    async def reload(self, urls: list[str] | None = None) -> None:
        """Load into memory the CRLs stored (by this or another process) that this process does not have."""
        async with self.pool.acquire() as conn:
            rows = await store.states(conn)
            wanted = [r["url"] for r in rows if (urls is None or r["url"] in urls) and r["sha256"] and
                      (self.sources.get(r["url"]) is None or self.sources[r["url"]].sha256 != r["sha256"])]
            full = {r["url"]: r for r in await store.ders(conn, wanted)} if wanted else {}
        for r in rows:
            if urls is not None and r["url"] not in urls:
                continue
            source = self.sources.setdefault(r["url"], Source(r["url"]))
            source.configured = r["configured"]
            source.error = r["last_error"]
            row = full.get(r["url"])
            if row is not None and row["der"] is not None:
                try:
                    source.crl = parse_crl(r["url"], row["der"], self.issuers)
                    source.sha256 = row["sha256"]
                except CrlError as exc:              # e.g. the CA files changed: not usable any more
                    source.crl, source.error = None, f"stored CRL: {exc}"

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
