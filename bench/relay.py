"""Relay bench: end-to-end messages/s and accept latency through the whole hub, and Postfix side by side.

    .venv/bin/python bench/relay.py [--sizes 5,100] [--concurrency 1,10,50] [--modes reuse,fresh] [--messages N]
                                    [--no-postfix] [--processes N] [--database-url URL] [--rules DIR] [--keep]

What runs (all on 127.0.0.1, plain SMTP on both sides):
  * a sink (bench/_sink.py, own process): a minimal asyncio SMTP server reading DATA in chunks, counting messages by
    their X-Bench-Id header and recording each arrival time;
  * `hub serve` as a subprocess with a temporary TOML config (embedded PostgreSQL, fsync on, under a temporary
    data_dir; or --database-url), `hub.processes` = --processes (0: one per core), the shipped routing rules
    (routing_rules/, or --rules DIR: every message goes through them), a network-bound account
    (127.0.0.0/8, MAIL FROM @bench.example) so the load needs no AUTH, and `sink.bench` as a local destination
    routed to the sink in plain SMTP: intake -> PostgreSQL -> delivery worker -> sink;
  * when Postfix is installed (and not --no-postfix): a private Postfix instance (`postfix -c DIR`, its own queue
    directory on disk, `relayhost = [127.0.0.1]:<sink>`, `mynetworks = 127.0.0.0/8`, otherwise default tuning)
    on another loopback port, fed by the same load tool and draining to the same sink;
  * per (mode, size, concurrency) and per MTA: a load generator (bench/_load.py, own process): N concurrent
    sessions over raw asyncio streams, --messages messages. Two modes: `reuse` (a connection carries message after
    message, EHLO once, pipelined MAIL/RCPT/DATA: a DPI's or a lab's long-lived connection) and `fresh` (one
    connection per message, no pipelining: connect, greeting, EHLO, MAIL, RCPT, DATA, message, QUIT, each
    waiting for its reply, as many sending systems do).

Figures: end-to-end msgs/s = messages delivered / (last first-arrival at the sink - first MAIL sent); accept
latency = from writing the message with its final ".\\r\\n" to the 250. Every accepted message must reach the sink
exactly once (missing / duplicates are reported). A detail line gives the intake rate, the CPU seconds per 1,000
messages of each party (MTA, PostgreSQL, load generator, sink) read from /proc, the machine's busy share, and
PostgreSQL commits and WAL syncs per message. At the end, per mode, the two summary tables: msgs/s hub / Postfix
(ratio) per size and concurrency, and per message: CPU ms (hub + PostgreSQL / Postfix), PostgreSQL commits, WAL
kB, accept latency p50 / p99 (Postfix's in brackets).

The load generator and the sink share the machine with the MTA under test, and other work on the machine shows in
the figures: run it on an idle machine (the load average is printed) and compare hub and Postfix within one run.
Every subprocess (hub, its embedded PostgreSQL, Postfix, sink, load) is stopped at the end, also on error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _load  # noqa: E402
import _sink  # noqa: E402

CTX = mp.get_context("fork")
CLK = os.sysconf("SC_CLK_TCK")
DEFAULT_MESSAGES = {5: 6000, 100: 3000}
FRESH_MESSAGES = {5: 3000, 100: 2000}     # one connection per message: fewer, the run lasts as long
MODES = {"reuse": "connections reused, pipelining", "fresh": "one connection per message, no pipelining"}
# messages sent before the measured runs: a production hub's tables are never nearly empty (the messages are kept
# for the retention period), and PostgreSQL plans its statements on a few hundred rows differently (sequential
# scans) from how it does on thousands
WARMUP = 3000
DELIVERY_IDLE_LIMIT = 30.0       # seconds without a new arrival before giving up on the rest
DELIVERY_TOTAL_LIMIT = 900.0
LOAD_TIME_LIMIT = 900.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


# ---- CPU accounting from /proc ------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, cpu seconds incl. waited-for children) of one process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return ppid, (utime + stime + cutime + cstime) / CLK


def tree_cpu(root: int | None) -> float:
    """CPU seconds of a process tree: every live process plus the exited children its members waited for."""
    if not root:
        return 0.0
    procs: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                procs[int(entry)] = st
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0.0, [root], set()
    while todo and len(seen) < 100_000:
        pid = todo.pop()
        if pid in seen or pid not in procs:
            continue
        seen.add(pid)
        total += procs[pid][1]
        todo.extend(children.get(pid, []))
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return sum(parts) - idle, sum(parts)


# ---- the sink -----------------------------------------------------------------------------------------------
class Sink:
    def __init__(self):
        self.port = free_port()
        self.ctrl, child = CTX.Pipe()
        self.proc = CTX.Process(target=_sink.run, args=(self.port, child), daemon=True, name="bench-sink")
        self.proc.start()
        if not self.ctrl.poll(30):
            raise RuntimeError("the sink did not start")
        _, self.pid = self.ctrl.recv()

    def ask(self, *cmd, timeout: float = 30.0):
        self.ctrl.send(cmd)
        if not self.ctrl.poll(timeout):
            raise RuntimeError(f"the sink did not answer {cmd[0]}")
        return self.ctrl.recv()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.ctrl.send(("stop",))
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


def wait_smtp(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.settimeout(5)
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.2)
    raise RuntimeError(f"no SMTP greeting on 127.0.0.1:{port} within {timeout:.0f} s ({last})")


# ---- the MTAs under test ------------------------------------------------------------------------------------
class HubMTA:
    name = "hub"

    def __init__(self, workdir: Path, sink_port: int, processes: int, database_url: str | None,
                 rules_dir: Path):
        self.dir = workdir / self.name
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.sink_port = sink_port
        self.processes = processes
        self.database_url = database_url
        self.rules_dir = rules_dir
        self.proc: subprocess.Popen | None = None
        self.config = self.dir / "hub.toml"
        self.log_path = self.dir / "hub.log"
        self.embedded = None

    def _toml(self) -> str:
        db = f'[database]\nurl = "{self.database_url}"\n\n' if self.database_url else ""
        return (
            f'[hub]\ndata_dir = "{self.dir / "var"}"\nprocesses = {self.processes}\ndomains = ["hub.example.org"]\n\n'
            f"{db}"
            f'[smtp]\nlisten = "127.0.0.1:{self.port}"\nhostname = "hub.example.org"\n\n'
            f'[http]\nlisten = "127.0.0.1:{free_port()}"\n\n'
            f'[delivery]\nlocal_domains = ["sink.bench"]\ntransport = {{ "sink.bench" = "127.0.0.1:{self.sink_port}" }}\n'
            f'tls_policy = {{ "sink.bench" = "none" }}\n\n'
            f'[rules]\ndir = "{self.rules_dir}"\nwatch = false\n')

    def env(self) -> dict:
        env = dict(os.environ, HUB_CONFIG=str(self.config))
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        return env


    def start(self) -> None:
        self.config.write_text(self._toml())
        if not self.database_url:
            from hub import db
            self.embedded = db.Embedded(self.dir / "var")
        cmd = [sys.executable, "-m", "hub", "accounts", "add", "bench", "--network", "127.0.0.0/8",
               "--allow-from", "bench.example"]
        r = subprocess.run(cmd, env=self.env(), cwd=str(self.dir), capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"hub accounts add failed: {r.stderr.strip()[-2000:]}")
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "hub", "serve"], env=self.env(), cwd=str(self.dir),
                                     stdout=self.logf, stderr=subprocess.STDOUT, start_new_session=True)
        n = self.processes or os.cpu_count() or 1
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub serve exited ({self.proc.returncode}): {self.log_tail()}")
            if self.log_path.read_bytes().count(b"hub_started") >= n:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"hub serve did not start {n} processes: {self.log_tail()}")
        wait_smtp(self.port, 30)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-3000:]
        return ""

    def cpu(self) -> float:
        return tree_cpu(self.proc.pid if self.proc else None)

    def pg_pid(self) -> int | None:
        if self.embedded is None:
            return None
        with contextlib.suppress(OSError, ValueError):
            return int((self.embedded.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        return None

    def admin_url(self) -> str:
        return self.database_url or self.embedded.url("postgres")

    def pg_counters(self) -> dict | None:
        async def q():
            import asyncpg
            conn = await asyncpg.connect(self.admin_url(), timeout=10)
            try:
                commits = await conn.fetchval(
                    "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
                # WAL bytes from the insert position (exact, whereas statistics lag)
                wal = await conn.fetchrow("SELECT wal_sync, wal_write,"
                                          " pg_current_wal_insert_lsn() - '0/0'::pg_lsn AS wal_bytes FROM pg_stat_wal")
                return {"commits": commits, "wal_sync": wal["wal_sync"], "wal_write": wal["wal_write"],
                        "wal_bytes": int(wal["wal_bytes"])}
            finally:
                await conn.close()
        try:
            return asyncio.run(asyncio.wait_for(q(), 20))
        except Exception:   # statistics are a bonus; the bench goes on without them
            return None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(45)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(10)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):   # workers die with the supervisor (PDEATHSIG)
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.embedded is not None:
            with contextlib.suppress(Exception):
                self.embedded.stop("fast")
        with contextlib.suppress(Exception):
            self.logf.close()


MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""



class HubWithoutAuditMTA(HubMTA):
    """The same hub with its audit writes replaced by a no-op, only to measure what the audit trail costs
    (`--audit-cost`). The replacement is a `sitecustomize` module put on this process's PYTHONPATH by the bench:
    the hub has no setting to turn its audit off."""
    name = "hub-no-audit"

    def env(self) -> dict:
        env = super().env()
        site = self.dir / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(
            "import hub.audit.store as _s\n"
            "async def _no_record(conn, *events):\n    return None\n"
            "_s.record = _no_record\n"
            "_s.columns = lambda events: [[] for _ in range(10)]\n")    # intake writes its events in its statement
        env["PYTHONPATH"] = str(site) + os.pathsep + env.get("PYTHONPATH", "")
        return env

class PostfixMTA:
    name = "postfix"

    def __init__(self, workdir: Path, sink_port: int, binary: str):
        self.dir = workdir / "postfix"
        self.conf = self.dir / "conf"
        self.queue = self.dir / "queue"
        self.data = self.dir / "data"
        self.port = free_port()
        self.sink_port = sink_port
        self.binary = binary
        self.started = False

    def _postfix(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([self.binary, "-c", str(self.conf), *args], capture_output=True, text=True,
                              timeout=timeout)

    def start(self) -> None:
        for d in (self.conf, self.queue, self.data):
            d.mkdir(parents=True)
        self.dir.chmod(0o755)
        self.dir.parent.chmod(0o755)
        import pwd
        pw = pwd.getpwnam("postfix")
        os.chown(self.data, pw.pw_uid, pw.pw_gid)
        (self.conf / "main.cf").write_text(
            "compatibility_level = 3.6\n"
            f"queue_directory = {self.queue}\n"
            f"data_directory = {self.data}\n"
            "mail_owner = postfix\nsetgid_group = postdrop\n"
            "myhostname = postfix.bench.example\nmydomain = bench.example\nmyorigin = $myhostname\n"
            "mydestination =\nlocal_recipient_maps =\nlocal_transport = error:local delivery disabled\n"
            "alias_maps =\nalias_database =\n"
            "inet_interfaces = 127.0.0.1\ninet_protocols = ipv4\n"
            "mynetworks = 127.0.0.0/8\n"
            f"relayhost = [127.0.0.1]:{self.sink_port}\n"
            "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n"
            "smtpd_tls_security_level = none\nsmtp_tls_security_level = none\n"
            "smtp_dns_support_level = disabled\n"
            "biff = no\nappend_dot_mydomain = no\n"
            f"maillog_file_prefixes = {self.dir}\nmaillog_file = {self.dir / 'maillog'}\n")
        (self.conf / "master.cf").write_text(MASTER_CF.format(listen=f"127.0.0.1:{self.port}"))
        r = self._postfix("start")
        if r.returncode != 0:
            raise RuntimeError(f"postfix start failed: {(r.stdout + r.stderr).strip()[-2000:]}")
        self.started = True
        wait_smtp(self.port, 60)

    def master_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.queue / "pid" / "master.pid").read_text().strip())
        return None

    def cpu(self) -> float:
        return tree_cpu(self.master_pid())

    def pg_pid(self):
        return None

    def pg_counters(self):
        return None

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "maillog").read_text(errors="replace")[-3000:]
        return ""

    def stop(self) -> None:
        if not self.started:
            return
        pid = self.master_pid()
        with contextlib.suppress(Exception):
            self._postfix("stop", timeout=60)
        deadline = time.monotonic() + 15
        while pid and time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if pid and _alive(pid):
            with contextlib.suppress(Exception):
                self._postfix("abort", timeout=30)
            time.sleep(1)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive for our purpose
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    return False


# ---- one measured run ---------------------------------------------------------------------------------------
@dataclass
class Result:
    mta: str
    size_kb: int
    concurrency: int
    rate: float = 0.0
    intake_rate: float = 0.0
    p50: float = 0.0
    p99: float = 0.0
    attempted: int = 0
    accepted: int = 0
    delivered: int = 0
    missing: int = 0
    duplicates: int = 0
    unexpected: int = 0
    cpu_ms: float = 0.0          # CPU of the MTA and its PostgreSQL per accepted message, ms
    commits: float | None = None # PostgreSQL commits per accepted message
    wal_kb: float | None = None  # WAL kB per accepted message
    mode: str = "reuse"
    refused: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    detail: str = ""

    def line(self) -> str:
        extra = ""
        if self.refused:
            extra += f", refused {self.refused}"
        if self.errors:
            extra += f", errors {self.errors}"
        if self.unexpected:
            extra += f", {self.unexpected} unexpected"
        return (f"{self.mta} {self.mode} {self.size_kb}KB c={self.concurrency}: {self.rate:.0f} msgs/s end-to-end,"
                f" accept p50 "
                f"{self.p50 * 1000:.1f} ms p99 {self.p99 * 1000:.1f} ms ({self.accepted} accepted, {self.delivered}"
                f" delivered, {self.missing} missing, {self.duplicates} duplicates{extra})")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run_load(port: int, tag: str, count: int, concurrency: int, size_kb: int, fresh: bool = False) -> dict:
    parent, child = CTX.Pipe()
    proc = CTX.Process(target=_load.run, args=("127.0.0.1", port, tag, count, concurrency, size_kb * 1024,
                                               LOAD_TIME_LIMIT, child, fresh), daemon=True, name="bench-load")
    proc.start()
    child.close()
    try:
        if not parent.poll(LOAD_TIME_LIMIT + 120):
            raise RuntimeError("the load generator did not finish")
        result = parent.recv()
        cpu = None
        st = _stat(proc.pid)
        if st is not None:
            cpu = st[1]
        result["cpu"] = cpu
        return result
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def measure(mta, sink: Sink, size_kb: int, concurrency: int, count: int, run_no: int, warmup: bool = False,
            mode: str = "reuse"):
    tag = f"r{run_no}"
    sink.ask("reset")
    cpu0 = mta.cpu()
    pg0_pid = mta.pg_pid()
    pgcpu0 = tree_cpu(pg0_pid)
    sinkcpu0 = tree_cpu(sink.pid)
    pgc0 = mta.pg_counters()
    busy0 = machine_busy()
    load = run_load(mta.port, tag, count, concurrency, size_kb, fresh=(mode == "fresh"))
    if "fatal" in load:
        raise RuntimeError(f"load generator failed: {load['fatal']}")
    accepted = load["accepted"]
    # wait until every accepted message has reached the sink (bounded)
    want = len(accepted)
    started = last_progress = time.monotonic()
    last = -1
    while True:
        n = sink.ask("count")
        now = time.monotonic()
        if n != last:
            last, last_progress = n, now
        if n >= want:
            break
        if now - last_progress > DELIVERY_IDLE_LIMIT or now - started > DELIVERY_TOTAL_LIMIT:
            break
        time.sleep(0.05)
    time.sleep(0.5)     # late duplicates
    if pgc0 is not None:
        time.sleep(1.0)  # PostgreSQL's backends publish their statistics (commits) at most once a second
    stats = sink.ask("stats")
    busy1 = machine_busy()
    cpu1 = mta.cpu()
    pgcpu1 = tree_cpu(pg0_pid)
    sinkcpu1 = tree_cpu(sink.pid)
    pgc1 = mta.pg_counters()
    if warmup:
        return None
    arrivals = stats["arrivals"]
    prefix = tag + "."
    ours = {int(k[len(prefix):]): v for k, v in arrivals.items() if k.startswith(prefix)}
    acc = set(accepted)
    delivered = [i for i in acc if i in ours]
    firsts = [ours[i][0] for i in delivered]
    r = Result(mta.name, size_kb, concurrency, attempted=load["attempted"], accepted=len(accepted),
               delivered=len(delivered), refused=load["refused"], errors=load["errors"], mode=mode)
    r.missing = len(acc) - len(delivered)
    r.duplicates = sum(len(v) - 1 for v in ours.values())
    r.unexpected = sum(len(v) for k, v in ours.items() if k not in acc) + stats["other"] + \
        sum(len(v) for k, v in arrivals.items() if not k.startswith(prefix))
    if firsts:
        r.rate = len(delivered) / max(1e-9, max(firsts) - load["first_send"])
    r.intake_rate = len(accepted) / max(1e-9, load["ended"] - load["first_send"])
    lat = sorted(load["latencies"])
    r.p50, r.p99 = percentile(lat, 50), percentile(lat, 99)
    n = max(1, len(accepted)) / 1000
    r.cpu_ms = ((cpu1 - cpu0) + ((pgcpu1 - pgcpu0) if pg0_pid else 0.0)) / n
    busy = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
    parts = [f"intake {r.intake_rate:.0f} msgs/s", f"drain lag {max(0.0, max(firsts) - load['ended']):.2f} s" if firsts else "",
             f"CPU s/1k msgs: {mta.name} {(cpu1 - cpu0) / n:.2f}"]
    if pg0_pid:
        parts[-1] += f", postgres {(pgcpu1 - pgcpu0) / n:.2f}"
    if load.get("cpu") is not None:
        parts[-1] += f", load {load['cpu'] / n:.2f}"
    parts[-1] += f", sink {(sinkcpu1 - sinkcpu0) / n:.2f}"
    parts.append(f"machine busy {busy * 100:.0f}% of {os.cpu_count()} cores")
    if pgc0 and pgc1:
        r.commits = (pgc1['commits'] - pgc0['commits']) / max(1, len(accepted))
        r.wal_kb = (pgc1['wal_bytes'] - pgc0['wal_bytes']) / 1024 / max(1, len(accepted))
        parts.append(f"pg commits/msg {(pgc1['commits'] - pgc0['commits']) / max(1, len(accepted)):.2f}, "
                     f"WAL syncs/msg {(pgc1['wal_sync'] - pgc0['wal_sync']) / max(1, len(accepted)):.2f}, "
                     f"WAL kB/msg {(pgc1['wal_bytes'] - pgc0['wal_bytes']) / 1024 / max(1, len(accepted)):.1f}")
    parts.append(f"loadavg {loadavg()}")
    r.detail = "  " + "; ".join(p for p in parts if p)
    return r


# ---- the summary tables -------------------------------------------------------------------------------------
def tables(results: dict, mode: str, sizes: list[int], concs: list[int]) -> str:
    """The issue's two tables for one mode, in Markdown: msgs/s hub / Postfix (ratio), then per-message figures."""
    def get(name, size, conc):
        return results.get((name, mode, size, conc))

    out = [f"\n{MODES[mode]} ({mode})\n", "| msgs/s, hub / Postfix (ratio) | " + " | ".join(f"c={c}" for c in concs)
           + " |", "|---|" + "---|" * len(concs)]
    for size in sizes:
        cells = []
        for conc in concs:
            h, p = get("hub", size, conc), get("postfix", size, conc)
            if h is None:
                cells.append("-")
            elif p is None or not p.rate:
                cells.append(f"{h.rate:.0f}")
            else:
                cells.append(f"{h.rate:.0f} / {p.rate:.0f} ({h.rate / p.rate:.2f})")
        out.append(f"| {size} KB | " + " | ".join(cells) + " |")
    cols = [(size, conc) for size in sizes for conc in concs]
    out += ["", "| per message | " + " | ".join(f"{s} KB c={c}" for s, c in cols) + " |", "|---|" + "---|" * len(cols)]

    def row(label, fmt):
        cells = []
        for size, conc in cols:
            h, p = get("hub", size, conc), get("postfix", size, conc)
            cells.append("-" if h is None else fmt(h, p))
        out.append(f"| {label} | " + " | ".join(cells) + " |")

    row("CPU ms, hub + PostgreSQL / Postfix", lambda h, p: f"{h.cpu_ms:.2f}" + (f" / {p.cpu_ms:.2f}" if p else ""))
    row("PostgreSQL commits", lambda h, p: "?" if h.commits is None else f"{h.commits:.2f}")
    row("WAL kB", lambda h, p: "?" if h.wal_kb is None else f"{h.wal_kb:.1f}")
    row("accept latency p50 / p99 ms, hub (Postfix)",
        lambda h, p: f"{h.p50 * 1000:.1f} / {h.p99 * 1000:.1f}" + (f" ({p.p50 * 1000:.1f} / {p.p99 * 1000:.1f})"
                                                                     if p else ""))
    return "\n".join(out)


# ---- main ---------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="5,100", help="message sizes in KB, comma-separated (default 5,100)")
    ap.add_argument("--concurrency", default="1,10,50", help="concurrent SMTP sessions, comma-separated")
    ap.add_argument("--modes", default="reuse,fresh",
                    help="reuse (connections reused, pipelining), fresh (one connection per message, no pipelining)")
    ap.add_argument("--messages", type=int, default=0,
                    help="messages per run (default: 6000 at 5 KB, 3000 at 100 KB, else 3000; fresh: 3000, 2000)")
    ap.add_argument("--no-postfix", action="store_true", help="do not run Postfix even when installed")
    ap.add_argument("--processes", type=int, default=0, help="hub.processes (default 0: one per core)")
    ap.add_argument("--database-url", default="", help="use this PostgreSQL instead of the embedded one")
    ap.add_argument("--rules", type=Path, default=ROOT / "routing_rules",
                    help="routing rules directory for the hub (default: the shipped routing_rules/)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) at the end")
    ap.add_argument("--audit-cost", action="store_true",
                    help="also run the hub without its audit writes and print what they cost (implies --no-postfix)")
    ap.add_argument("--pairs", type=int, default=5, help="with --audit-cost: alternating pairs of runs (default 5)")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    concs = [int(x) for x in args.concurrency.split(",") if x.strip()]
    if not sizes or not concs or min(sizes) <= 0 or min(concs) <= 0 or not all(c <= 1000 for c in concs):
        ap.error("sizes and concurrency must be positive numbers (concurrency at most 1000)")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        ap.error(f"--modes: a comma-separated list of {', '.join(MODES)}")
    if args.audit_cost:
        modes = modes[:1]

    postfix_bin = None
    if args.audit_cost:
        args.no_postfix = True
    if not args.no_postfix:
        postfix_bin = shutil.which("postfix") or ("/usr/sbin/postfix" if Path("/usr/sbin/postfix").exists() else None)
        if postfix_bin and os.geteuid() != 0:
            print("postfix: installed, but a private Postfix instance needs root: hub figures only")
            postfix_bin = None
        elif not postfix_bin:
            print("postfix: not installed (command -v postfix, /usr/sbin/postfix): hub figures only")

    print(f"relay bench: {os.cpu_count()} cores, load average {loadavg()} at start; load generator, sink and "
          f"MTAs share the machine, other work on it makes the figures noisy")
    workdir = Path(tempfile.mkdtemp(prefix="hub-relay-bench-"))
    workdir.chmod(0o755)
    sink = hub = pf = bare = None
    interrupted = False

    def on_term(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    results: dict[tuple[str, str, int, int], Result] = {}
    try:
        sink = Sink()
        hub = HubMTA(workdir, sink.port, args.processes, args.database_url or None, args.rules.resolve())
        hub.start()
        mtas = [hub]
        if args.audit_cost:
            bare = HubWithoutAuditMTA(workdir, sink.port, args.processes, args.database_url or None,
                                      args.rules.resolve())
            bare.start()
            mtas.append(bare)
        if postfix_bin:
            pf = PostfixMTA(workdir, sink.port, postfix_bin)
            pf.start()
            mtas.append(pf)
        print(f"hub: `hub serve` with {args.processes or os.cpu_count()} processes on 127.0.0.1:{hub.port}, "
              f"{'PostgreSQL ' + args.database_url if args.database_url else 'embedded PostgreSQL (fsync on)'}"
              + (f"; postfix on 127.0.0.1:{pf.port}" if pf else "") + f"; sink on 127.0.0.1:{sink.port}",
              flush=True)
        run_no = 0
        for mta in mtas:
            run_no += 1
            measure(mta, sink, 5, 10, WARMUP, run_no, warmup=True)
        for mode, size in ((m, z) for m in modes for z in sizes):
            count = args.messages or (FRESH_MESSAGES if mode == "fresh" else DEFAULT_MESSAGES).get(size, 3000)
            for conc in concs:
                costs = []
                runs: dict[str, list[Result]] = {"hub": [], "hub-no-audit": []}
                for pair in range(args.pairs if args.audit_cost else 1):
                    # with --audit-cost, pairs alternate which hub runs first, so drift on a shared machine
                    # does not always favour the same one; the median of the pairs is the figure
                    for mta in (mtas if pair % 2 == 0 else [mtas[1], mtas[0], *mtas[2:]]):
                        run_no += 1
                        r = measure(mta, sink, size, conc, count, run_no, mode=mode)
                        results[(mta.name, mode, size, conc)] = r
                        runs.setdefault(mta.name, []).append(r)
                        print(r.line(), flush=True)
                        print(r.detail, flush=True)
                    if args.audit_cost:
                        a, b = results[("hub", mode, size, conc)], results[("hub-no-audit", mode, size, conc)]
                        if b.rate:
                            costs.append(1 - a.rate / b.rate)
                        print(f"  pair {pair + 1}: {a.rate:.0f} msgs/s with audit writes, {b.rate:.0f} without",
                              flush=True)
                if args.audit_cost and costs:
                    costs.sort()
                    median = costs[len(costs) // 2] if len(costs) % 2 else sum(costs[len(costs) // 2 - 1:
                                                                                   len(costs) // 2 + 1]) / 2
                    best_a = max(r.rate for r in runs["hub"])
                    best_b = max(r.rate for r in runs["hub-no-audit"])
                    cpu_a = min(r.cpu_ms for r in runs["hub"])
                    cpu_b = min(r.cpu_ms for r in runs["hub-no-audit"])
                    # interference from other work on the machine only ever slows a run down: the least disturbed
                    # run of each variant (the fastest, the one with the least CPU per message) is the steadiest
                    # estimate; the median of the alternating pairs is printed beside it
                    print(f"audit writes cost {size}KB c={conc}: {(1 - best_a / best_b) * 100:.1f}% of relay "
                          f"throughput (best run of each: {best_a:.0f} msgs/s with audit writes, {best_b:.0f} "
                          f"without); median of {len(costs)} alternating pairs {median * 100:.1f}% "
                          f"({', '.join(f'{c * 100:.1f}%' for c in costs)}); CPU per message (hub + PostgreSQL, "
                          f"least of each) {cpu_a:.2f} ms with, {cpu_b:.2f} ms without: "
                          f"+{(cpu_a / cpu_b - 1) * 100:.1f}%", flush=True)
                if pf is not None:
                    a, b = results[("hub", mode, size, conc)], results[("postfix", mode, size, conc)]
                    ratio = f"{a.rate / b.rate:.2f}" if b.rate else "n/a"
                    print(f"ratio hub/postfix {mode} {size}KB c={conc}: {ratio}", flush=True)
        print(f"\nload average at the end {loadavg()}")
        for mode in modes:
            print(tables(results, mode, sizes, concs))
        bad = [r for r in results.values() if r.missing or r.duplicates]
        return 1 if bad else 0
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"relay bench failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        for m in (hub, pf):
            if m is not None:
                tail = m.log_tail()
                if tail:
                    print(f"--- {m.name} log tail ---\n{tail}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for m in (pf, hub, bare):
            if m is not None:
                with contextlib.suppress(Exception):
                    m.stop()
        if sink is not None:
            sink.stop()
        if args.keep or interrupted:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
