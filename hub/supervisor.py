"""The `hub serve` supervisor: starts the worker processes, restarts them, watches the embedded PostgreSQL.

    start    fork `hub.processes` workers (each inherits its listening socket, bound by hub.preflight) and wait
             until each has written READY on its pipe. A worker that dies before that is a start-up failure: the
             others are stopped and the supervisor exits with its code (2 for a configuration error).
    run      a worker that dies is restarted after a backoff (1 s, doubling, at most 30 s). One that dies within
             30 s of its start is a fast failure; after 5 fast failures in a row the supervisor gives up and
             exits 1 (systemd's Restart= or the container's restart policy then decide). A worker whose heartbeat
             (a byte every 5 s from its event loop) stops for 60 s is killed and restarted.
             The embedded PostgreSQL (no database.url) is checked every 2 s; when its postmaster died (killed,
             OOM) it is started again with the same backoff, said in the log (`database_died`,
             `database_restarted`) and in data_dir/postgresql.status.json, which /healthz reports. Its server log
             (warnings and errors) is forwarded into the hub's log as JSON lines (`postgresql_log`).
             Under systemd: READY=1 once every worker started, WATCHDOG=1 from this loop, STOPPING=1 (hub.sdnotify).
    stop     SIGTERM/SIGINT are forwarded to the workers (graceful stop), SIGHUP too (rules reload).

The supervisor reaps every child, orphans included (it may be PID 1 in a container).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import select
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import structlog

from hub import observability as obs, sdnotify

log = structlog.get_logger("hub.supervisor")

READY, BEAT = b"R", b"H"
BEAT_INTERVAL = 5.0
STALE_AFTER = 60.0
FAST_FAILURE = 30.0
GIVE_UP_AFTER = 5
MAX_BACKOFF = 30.0
PG_CHECK_INTERVAL = 2.0
STOP_GRACE = 75.0


def backoff(failures: int) -> float:
    """Seconds before the next restart after `failures` failures in a row (1, 2, 4 ... 30)."""
    return min(MAX_BACKOFF, 2.0 ** max(0, failures - 1))


@dataclass
class Worker:
    index: int
    pid: int = 0
    fd: int = -1                   # read end of the worker's pipe
    started: float = 0.0
    ready: bool = False
    last_beat: float = 0.0
    failures: int = 0              # fast failures in a row
    restart_at: float | None = None


_PG_LINE = re.compile(r"\b(DEBUG\d?|INFO|NOTICE|WARNING|ERROR|LOG|FATAL|PANIC):\s+(.*)$")
_PG_LEVEL = {"WARNING": "warning", "ERROR": "error", "FATAL": "error", "PANIC": "error"}


class LogTail:
    """New complete lines of a growing file (PostgreSQL's server.log), from its end at creation."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.partial = b""

    def lines(self) -> list[str]:
        try:
            size = self.path.stat().st_size
            if size < self.offset:           # rotated or truncated
                self.offset = 0
            if size == self.offset:
                return []
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read(1 << 20)
        except OSError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *complete, self.partial = data.split(b"\n")
        return [line.decode("utf-8", "replace") for line in complete]


def forward_postgres_lines(lines: list[str]) -> None:
    """Each primary message as a JSON event; DETAIL, STATEMENT and continuation lines are left out (they may quote
    data values)."""
    for line in lines:
        m = _PG_LINE.search(line)
        if not m:
            continue
        severity, text = m.groups()
        getattr(log, _PG_LEVEL.get(severity, "info"))("postgresql_log", severity=severity, message=text[:2000])


class PostgresWatch:
    """Keeps the embedded PostgreSQL running: checked every PG_CHECK_INTERVAL, restarted (pg_ctl start, without
    blocking the supervisor) with backoff when its postmaster is gone."""

    def __init__(self, embedded, status_path: Path):
        self.emb = embedded
        self.status_path = status_path
        self.state = "running"
        self.restarts = 0                 # restarts since start-up
        self.failures = 0                 # failed attempts in a row
        self.next_check = 0.0
        self.retry_at = 0.0
        self.proc: subprocess.Popen | None = None
        self.since = dt.datetime.now(dt.timezone.utc)
        self.last_error: str | None = None
        self.tail = LogTail(embedded.pgdata / "server.log")
        self._write()

    def _write(self) -> None:
        data = {"state": self.state, "since": self.since.isoformat(), "restarts": self.restarts,
                "last_error": self.last_error}
        tmp = self.status_path.with_suffix(".tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(data))
            tmp.chmod(0o644)
            tmp.replace(self.status_path)

    def _set(self, state: str, error: str | None = None) -> None:
        if state != self.state:
            self.since = dt.datetime.now(dt.timezone.utc)
        self.state, self.last_error = state, error
        self._write()

    def reaped(self, pid: int, status: int) -> bool:
        if self.proc is None or pid != self.proc.pid:
            return False
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        return True

    def poll(self, now: float) -> None:
        forward_postgres_lines(self.tail.lines())
        if now < self.next_check:
            return
        self.next_check = now + PG_CHECK_INTERVAL
        if self.proc is not None:
            if self.proc.returncode is None:
                return                                   # pg_ctl start still waiting for the server
            ok = self.proc.returncode == 0 and self.emb.is_running()
            self.proc = None
            if ok:
                log.warning("database_restarted", restarts=self.restarts)
                obs.DATABASE_RESTARTS.labels("ok").inc()
                self.failures = 0
                self._set("running")
                sdnotify.notify("STATUS=serving")
                return
            self.failures += 1
            obs.DATABASE_RESTARTS.labels("failed").inc()
            error = self.emb.last_log_line() or "pg_ctl start failed"
            delay = backoff(self.failures)
            log.error("database_restart_failed", attempt=self.failures, error=error, retry_in=delay)
            self.retry_at = now + delay
            self._set("restarting", error)
            return
        if self.emb.is_running():
            return
        if self.state == "running":
            log.error("database_died", pgdata=str(self.emb.pgdata),
                      detail="the embedded PostgreSQL is not running; restarting it")
            sdnotify.notify("STATUS=embedded PostgreSQL down, restarting")
            self._set("restarting", "postmaster not running")
            self.retry_at = now
        if now >= self.retry_at:
            self.restarts += 1
            self.proc = self.emb.launch()

    def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(ChildProcessError):
                self.proc.wait(10)


@dataclass
class Supervisor:
    processes: int
    target: Callable[[int, int], int]        # runs in the child: (index, pipe write end) -> exit code
    pg: PostgresWatch | None = None
    services: list = field(default_factory=list)   # other children it keeps running: reaped(pid, status), poll, close
    workers: list[Worker] = field(default_factory=list)
    stopping: bool = False
    exit_code: int = 0
    _wake: tuple[int, int] = (-1, -1)
    _pending_signals: list[int] = field(default_factory=list)

    def run(self) -> int:
        self.workers = [Worker(i) for i in range(self.processes)]
        self._wake = os.pipe()
        for fd in self._wake:
            os.set_blocking(fd, False)
        old_wakeup = signal.set_wakeup_fd(self._wake[1])
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            for w in self.workers:
                self._spawn(w)
            return self._loop()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.pg is not None:
                self.pg.close()
            for service in self.services:
                service.close()
            for fd in self._wake:
                os.close(fd)

    def _on_signal(self, sig, _frame) -> None:
        self._pending_signals.append(sig)

    # ---- children ----------------------------------------------------------------------------------------------
    def _spawn(self, w: Worker) -> None:
        r, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:                       # the worker
            code = 1
            try:
                os.close(r)
                signal.set_wakeup_fd(-1)
                for fd in (*self._wake, *(o.fd for o in self.workers if o.fd >= 0)):
                    with contextlib.suppress(OSError):
                        os.close(fd)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
                code = self.target(w.index, wfd)
            except BaseException:
                with contextlib.suppress(BaseException):
                    log.exception("process_failed", process=w.index)
            finally:
                os._exit(code)
        os.close(wfd)
        os.set_blocking(r, False)
        now = time.monotonic()
        w.pid, w.fd, w.started, w.ready, w.last_beat, w.restart_at = pid, r, now, False, now, None

    def _read(self, w: Worker, now: float) -> None:
        try:
            data = os.read(w.fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if READY in data and not w.ready:
            w.ready = True
            log.info("process_ready", process=w.index, pid=w.pid)
        if data:
            w.last_beat = now

    def _reap(self, now: float) -> list[tuple[Worker, int]]:
        dead = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if self.pg is not None and self.pg.reaped(pid, status):
                continue
            if any(service.reaped(pid, status) for service in self.services):
                continue
            w = next((x for x in self.workers if x.pid == pid), None)
            if w is None:
                continue                   # an orphan (we may be PID 1)
            obs.process_dead(pid)
            with contextlib.suppress(OSError):
                self._read(w, now)
                os.close(w.fd)
            w.fd, w.pid = -1, 0
            dead.append((w, os.waitstatus_to_exitcode(status)))
        return dead

    def _signal_all(self, sig: int) -> None:
        for w in self.workers:
            if w.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, sig)

    # ---- the loop ---------------------------------------------------------------------------------------------
    def _loop(self) -> int:
        all_ready = False
        watchdog = sdnotify.watchdog_interval()
        next_ping = 0.0
        stop_deadline = None
        while True:
            now = time.monotonic()
            fds = [self._wake[0]] + [w.fd for w in self.workers if w.fd >= 0]
            with contextlib.suppress(InterruptedError):
                readable, _, _ = select.select(fds, [], [], 0.5)
            now = time.monotonic()
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake[0], 512):
                    pass
            for sig in self._pending_signals:
                self._handle_signal(sig)
            self._pending_signals.clear()
            for w in self.workers:
                if w.fd >= 0 and w.fd in readable:
                    self._read(w, now)
            for w, code in self._reap(now):
                self._died(w, code, now, all_ready)
            if self.stopping:
                if not any(w.pid for w in self.workers):
                    return self.exit_code
                if stop_deadline is None:
                    stop_deadline = now + STOP_GRACE
                elif now > stop_deadline:
                    log.error("process_stop_timeout", grace=STOP_GRACE)
                    self._signal_all(signal.SIGKILL)
                    stop_deadline = now + 3600
                continue
            if not all_ready and all(w.ready for w in self.workers):
                all_ready = True
                log.info("supervisor_started", processes=self.processes, pid=os.getpid())
                sdnotify.notify("READY=1", f"STATUS=serving with {self.processes} process(es)",
                                f"MAINPID={os.getpid()}")
            for w in self.workers:
                if w.pid == 0 and w.restart_at is not None and now >= w.restart_at:
                    self._spawn(w)
                elif w.pid and w.ready and now - w.last_beat > STALE_AFTER:
                    log.error("process_unresponsive", process=w.index, pid=w.pid, silent_for=round(now - w.last_beat))
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(w.pid, signal.SIGKILL)
                    w.last_beat = now
            if self.pg is not None:
                self.pg.poll(now)
            for service in self.services:
                service.poll(now)
            if watchdog is not None and now >= next_ping:
                sdnotify.notify("WATCHDOG=1")
                next_ping = now + watchdog

    def _handle_signal(self, sig: int) -> None:
        if sig == signal.SIGHUP:
            log.info("rules_reload_requested", signal="SIGHUP")
            self._signal_all(signal.SIGHUP)
            return
        if not self.stopping:
            log.info("supervisor_stopping", signal=signal.Signals(sig).name)
            sdnotify.notify("STOPPING=1")
        self.stopping = True
        self._signal_all(signal.SIGTERM)

    def _died(self, w: Worker, code: int, now: float, all_ready: bool) -> None:
        if self.stopping:
            if code not in (0, -signal.SIGTERM):
                log.warning("process_exited", process=w.index, code=code)
            return
        if not all_ready and not w.ready:
            # a start-up failure (the worker logged why): stop everything, exit with its code
            log.error("startup_failed", process=w.index, code=code,
                      error="a hub process could not start (its error is logged above)")
            self.exit_code = 2 if code == 2 else 1
            self.stopping = True
            self._signal_all(signal.SIGTERM)
            return
        fast = (now - w.started) < FAST_FAILURE
        w.failures = w.failures + 1 if fast else 1
        obs.PROCESS_RESTARTS.inc()
        if w.failures >= GIVE_UP_AFTER:
            log.error("supervisor_gave_up", process=w.index, code=code, failures=w.failures,
                      error=f"hub process {w.index} died {w.failures} times in a row within {FAST_FAILURE:.0f} s"
                            " of starting")
            self.exit_code = 1
            self.stopping = True
            self._signal_all(signal.SIGTERM)
            return
        delay = backoff(w.failures)
        log.error("process_died", process=w.index, code=code, restart_in=delay, failures=w.failures)
        w.restart_at = now + delay
