"""An ANS schematron validator process, started by the hub, nothing else:

    python -m hub.transform.validate.worker FOLDER [SET...]
        one per `IsolatedSchematrons` (a hub process of its own, `hub transform check`): compiles the rules, then
        answers one JSON line on stdout per request line on stdin;
    python -m hub.transform.validate.worker --socket-fd N [--cache DIR] FOLDER SET...
        started by `hub serve`'s supervisor (`hub.transform.validate.service`): answers one request per connection
        accepted on the inherited socket N, shared by every worker process of the node.
"""

import argparse
import contextlib
import signal
import socket
import sys


def _die_with_parent() -> None:
    """Linux: SIGKILL when the supervisor dies, so no validator outlives its hub."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG


if __name__ == "__main__":
    if "--socket-fd" not in sys.argv:
        from hub.transform.validate.schematron import serve

        serve(sys.argv[1], tuple(sys.argv[2:]) or None, sys.stdin, sys.stdout)
    else:
        ap = argparse.ArgumentParser()
        ap.add_argument("--socket-fd", type=int, required=True)
        ap.add_argument("--cache", default="")
        ap.add_argument("folder")
        ap.add_argument("sets", nargs="+")
        args = ap.parse_args()
        _die_with_parent()
        from hub import observability as obs
        from hub.memory import tune_allocator
        from hub.transform.validate.service import serve_socket

        tune_allocator()
        obs.configure_logging(json=not sys.stderr.isatty())
        serve_socket(socket.socket(fileno=args.socket_fd), args.folder, tuple(args.sets), args.cache or None)
