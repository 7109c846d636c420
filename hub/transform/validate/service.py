"""The ANS schematron validators of one node, shared by every worker process of `hub serve`.

The compiled rules take a few hundred MB and seconds to compile: `hub serve` pays it once per node, not once per
worker process. The supervisor (`ValidatorService`, one of its `services`) binds one local socket per group of
sets (`STRUCMIN`, the costliest profile, and the other sets: a document is checked by both at the same time, on
two cores) in `data_dir/run/`, then starts `transform.schematron_processes` validator processes per group
(`python -m hub.transform.validate.worker --socket-fd N ...`), which accept on it. A worker process
(`SharedSchematrons`, what its registry uses) connects for each check: a connection waits in the socket's
backlog until a validator process is free, so the checks of every worker are shared out among the validators
with no broker. A validator process that dies is started again by the supervisor (backoff 1 s doubling to 30 s);
meanwhile the socket stays bound and the checks wait for it. The generated validators are kept in
`data_dir/cache/schematron` (`Schematrons(cache=...)`), so a restart only compiles them.

Protocol, one request per connection: a JSON line `{"cda", "templates", "code", "only"}` (or `{"ping": true}`),
answered by one JSON line, `{"checked", "failures"}`, `{"failed": reason}` (SaxonC could not run on the document)
or `{"error": reason}` (the rules do not compile: a configuration error).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import structlog

from hub.errors import ConfigError, TemporaryError, TransformError
from hub.transform.validate.schematron import (CRBIO, LDLSES, PROFILES, STRUCMIN, Conformance, Failure,
                                               Schematrons, sets_for)
from hub.transform.validate.schematron import answer as respond

log = structlog.get_logger("hub.transform.validate")

GROUPS = ((STRUCMIN,), tuple(n for n in (CRBIO, LDLSES, *PROFILES) if n != STRUCMIN))
CHECK_TIMEOUT = 120.0          # a check normally takes milliseconds; this long only while a validator restarts
MAX_BACKOFF = 30.0
MAX_REQUEST = 64 * 1024 * 1024


class ValidatorUnavailable(TemporaryError, OSError):
    """No validator answered in time (they are restarting): the message is processed again later, as when the
    database is briefly unavailable (an OSError for the processing stage)."""


# ---------------------------------------------------------------- in the supervisor

class _Process:
    def __init__(self, group: int, index: int):
        self.group, self.index = group, index
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.failures = 0
        self.restart_at: float | None = None


class ValidatorService:
    """Starts and restarts the validator processes of one `hub serve` (a supervisor service: `reaped`, `poll`,
    `close`)."""

    def __init__(self, folder: str, data_dir: Path, processes: int = 1):
        Schematrons(folder)                       # the files are there and saxonche installed (ConfigError)
        self.folder = str(Path(folder).resolve())
        self.cache = Path(data_dir) / "cache" / "schematron"
        run = Path(data_dir) / "run"
        if len(str(run / "schematron-0.sock")) > 100:        # a Unix socket path is at most 107 bytes
            run = Path(tempfile.mkdtemp(prefix="hub-validators-"))
        run.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.sockets: list[socket.socket] = []
        self.addresses: list[tuple[str, tuple[str, ...]]] = []
        for i, sets in enumerate(GROUPS):
            path = str(run / f"schematron-{i}.sock")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)                   # left by a hub that was killed (the data directory is locked)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(path)
            os.chmod(path, 0o600)
            sock.listen(128)
            self.sockets.append(sock)
            self.addresses.append((path, sets))
        self.processes = [_Process(g, i) for g in range(len(GROUPS)) for i in range(max(1, processes))]
        self.started = time.monotonic()

    def start(self) -> None:
        for p in self.processes:
            self._spawn(p)

    def _spawn(self, p: _Process) -> None:
        sock = self.sockets[p.group]
        command = [sys.executable, "-m", "hub.transform.validate.worker", "--socket-fd", str(sock.fileno()),
                   "--cache", str(self.cache), self.folder, *GROUPS[p.group]]
        p.proc = subprocess.Popen(command, pass_fds=(sock.fileno(),), stdin=subprocess.DEVNULL)
        p.started, p.restart_at = time.monotonic(), None

    @property
    def pids(self) -> list[int]:
        return [p.proc.pid for p in self.processes if p.proc is not None and p.proc.returncode is None]

    def reaped(self, pid: int, status: int) -> bool:
        """The supervisor reaped a child: ours? Then it is started again after a backoff."""
        p = next((p for p in self.processes if p.proc is not None and p.proc.pid == pid), None)
        if p is None:
            return False
        p.proc.returncode = os.waitstatus_to_exitcode(status)
        now = time.monotonic()
        p.failures = p.failures + 1 if now - p.started < MAX_BACKOFF else 1
        delay = min(MAX_BACKOFF, 2.0 ** (p.failures - 1))
        log.error("schematron_validator_died", group=p.group, pid=pid, code=p.proc.returncode, restart_in=delay)
        p.proc, p.restart_at = None, now + delay
        return True

    def poll(self, now: float) -> None:
        for p in self.processes:
            if p.proc is None and p.restart_at is not None and now >= p.restart_at:
                self._spawn(p)
                log.warning("schematron_validator_restarted", group=p.group, pid=p.proc.pid)

    def close(self) -> None:
        for p in self.processes:
            if p.proc is not None and p.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.proc.send_signal(signal.SIGTERM)
        for p in self.processes:
            if p.proc is not None and p.proc.returncode is None:
                with contextlib.suppress(ChildProcessError, subprocess.TimeoutExpired):
                    p.proc.wait(5)
        for sock, (path, _) in zip(self.sockets, self.addresses):
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(path)


# ---------------------------------------------------------------- the validator process

def serve_socket(sock: socket.socket, folder: str, sets: tuple[str, ...], cache: str | None) -> None:
    """Compile (or load from the cache), then answer one request per connection, one at a time."""
    started = time.monotonic()
    error = None
    try:
        schematrons = Schematrons(folder, sets=sets, cache=cache)
        schematrons.warm(sets)
        log.info("schematron_validator_ready", sets=len(sets), pid=os.getpid(),
                 seconds=round(time.monotonic() - started, 1), rss_mb=_rss_mb())
    except ConfigError as exc:
        error = str(exc)
        log.error("schematron_validator_failed", error=error)
    while True:
        try:
            conn, _ = sock.accept()
        except InterruptedError:
            continue
        with conn:
            conn.settimeout(30)
            try:
                with conn.makefile("rb") as reader:
                    line = reader.readline(MAX_REQUEST)
                if error is not None:
                    answer = json.dumps({"error": error})
                elif not line:
                    continue
                else:
                    answer = respond(schematrons, line)
                conn.sendall(answer.encode("ascii") + b"\n")
            except OSError:
                continue                          # the worker went away: nothing to answer


def _rss_mb() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return 0


# ---------------------------------------------------------------- in a worker process

class SharedSchematrons:
    """The `Schematrons` interface over the node's validator processes (see above)."""

    def __init__(self, folder: str, addresses: list[tuple[str, tuple[str, ...]]]):
        self.folder = Path(folder)
        self.addresses = addresses

    @property
    def enabled(self) -> bool:
        return True

    def warm(self, names: tuple[str, ...] | None = None, timeout: float = 600.0) -> None:
        """Wait until every group answers (they compile while the workers start); ConfigError if the rules do
        not compile."""
        for path, _ in self.addresses:
            answer = _ask(path, b'{"ping": true}\n', timeout)
            if "error" in answer:
                raise ConfigError(f"transform.schematron_dir: {answer['error']}")

    def check(self, cda: bytes | str, template_ids, code: str = "", *,
              only: tuple[str, ...] | None = None) -> Conformance:
        names = only or sets_for(template_ids, code)
        text = cda.decode("utf-8") if isinstance(cda, (bytes, bytearray)) else cda
        jobs = []
        for path, sets in self.addresses:
            mine = [n for n in names if n in sets]
            if mine:
                jobs.append((path, json.dumps({"cda": text, "templates": list(template_ids), "code": code,
                                               "only": mine}).encode("utf-8") + b"\n"))
        answers = _ask_all(jobs)
        for answer in answers:
            if "error" in answer:
                raise TransformError(f"the ANS schematrons do not compile: {answer['error']}")
            if "failed" in answer:
                raise TransformError(f"the ANS schematrons could not run on the document: {answer['failed']}")
        order = {os.path.basename(n): i for i, n in enumerate(names)}
        failures = sorted((Failure(*f) for a in answers for f in a["failures"]),
                          key=lambda f: order.get(f.schematron, len(order)))
        return Conformance(tuple(names), tuple(failures))

    def close(self) -> None:
        pass


def _ask_all(jobs: list[tuple[str, bytes]]) -> list[dict]:
    """Send every request first (the groups work at the same time), then read the answers. A validator that
    died while checking (EOF) is asked again once, on a new connection."""
    conns = []
    try:
        for path, request in jobs:
            conns.append(_send(path, request))
        answers = []
        for (path, request), conn in zip(jobs, conns):
            answer = _receive(conn)
            if answer is None:                     # died mid-check: its restart (or a sibling) answers
                answer = _ask(path, request, CHECK_TIMEOUT)
            answers.append(answer)
        return answers
    finally:
        for conn in conns:
            conn.close()


def _ask(path: str, request: bytes, timeout: float) -> dict:
    conn = _send(path, request, timeout)
    try:
        answer = _receive(conn)
    finally:
        conn.close()
    if answer is None:
        raise TransformError("the ANS schematron validator stopped while checking the document")
    return answer


def _send(path: str, request: bytes, timeout: float = CHECK_TIMEOUT) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    try:
        conn.connect(path)
        conn.sendall(request)
    except OSError as exc:
        conn.close()
        raise ValidatorUnavailable(f"the ANS schematron validators are not reachable ({path}): "
                                   f"{exc.strerror or type(exc).__name__}") from None
    return conn


def _receive(conn: socket.socket) -> dict | None:
    """The answer, or None when the validator closed the connection without one."""
    chunks = []
    try:
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if chunk.endswith(b"\n"):
                break
    except socket.timeout:
        raise ValidatorUnavailable("the ANS schematron validators did not answer in time (restarting?)") from None
    except OSError:
        return None
    data = b"".join(chunks)
    if not data.endswith(b"\n"):
        return None
    return json.loads(data)
