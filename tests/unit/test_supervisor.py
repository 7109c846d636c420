"""The supervisor with real forked workers: start-up failure, restarts and give-up, graceful stop, and the
systemd notifications (READY, WATCHDOG, STOPPING) on a real datagram socket."""

import os
import signal
import socket
import threading
import time

import pytest
from structlog.testing import capture_logs

from hub import supervisor
from hub.supervisor import READY, Supervisor

BACKOFF = supervisor.backoff            # before the fixture below replaces it


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(supervisor, "backoff", lambda failures: 0.05)


def _later(seconds: float, sig=signal.SIGTERM):
    t = threading.Timer(seconds, os.kill, (os.getpid(), sig))
    t.start()
    return t


def serve_forever(index: int, fd: int) -> int:
    os.write(fd, READY)
    while True:
        time.sleep(0.05)


def test_a_worker_that_fails_before_ready_stops_the_start_with_its_code():
    def target(index, fd):
        if index == 1:
            return 2                         # e.g. a configuration error found by the worker
        return serve_forever(index, fd)

    with capture_logs() as logs:
        assert Supervisor(2, target).run() == 2
    assert any(e["event"] == "startup_failed" and e["process"] == 1 for e in logs)


def test_fast_failures_are_restarted_then_given_up_with_exit_1():
    def target(index, fd):
        os.write(fd, READY)
        time.sleep(0.1)
        return 3

    with capture_logs() as logs:
        assert Supervisor(1, target).run() == 1
    died = [e for e in logs if e["event"] == "process_died"]
    assert len(died) == supervisor.GIVE_UP_AFTER - 1 and died[0]["code"] == 3
    assert [e for e in logs if e["event"] == "supervisor_gave_up"][0]["failures"] == supervisor.GIVE_UP_AFTER


def test_sigterm_stops_the_workers_and_exits_0(tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    timer = _later(1.5)
    try:
        with capture_logs() as logs:
            assert Supervisor(2, serve_forever).run() == 0
    finally:
        timer.cancel()
    assert any(e["event"] == "supervisor_started" for e in logs)
    assert not any(e["event"] == "process_died" for e in logs)
    sock.setblocking(False)
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            break
    sock.close()
    text = "\n".join(messages)
    assert "READY=1" in text and "WATCHDOG=1" in text and "STOPPING=1" in text
    assert text.index("READY=1") < text.index("STOPPING=1")


def test_backoff_doubles_to_a_ceiling():
    assert [BACKOFF(n) for n in (1, 2, 3, 4, 5, 6, 9)] == [1, 2, 4, 8, 16, 30, 30]
