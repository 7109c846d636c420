"""Cost bench: what one message costs the hub and its PostgreSQL in CPU time, and the rate, for this tree against
another one (before / after a change), side by side in one run.

    .venv/bin/python bench/cost.py --base DIR [--modes reuse] [--sizes 100] [--concurrency 1] [--messages N]
                                   [--pairs 3] [--processes N]

DIR is another checkout of the hub (e.g. `git worktree add /tmp/base main`, or `git archive main | tar -x -C
DIR`): its `hub serve` runs with PYTHONPATH=DIR. Both hubs are set up as in bench/relay.py (embedded PostgreSQL
with fsync on, the shipped routing rules, the same sink and load generator), started at once and warmed up; then
per cell the two are measured one after the other, --pairs times, alternating which goes first (drift on a
shared machine then favours neither). Printed per cell and hub: the median over the pairs of msgs/s end to end,
CPU ms per message (hub + PostgreSQL, and each, read from /proc as bench/relay.py does), PostgreSQL commits
per message, accept latency p50 / p99; the load average before and after. CPU per message moves less than the rates when other work shares the
machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import relay  # noqa: E402


class BaseHubMTA(relay.HubMTA):
    """The same set-up, running the hub of another source tree."""
    name = "base"

    def __init__(self, *args, source: Path, **kw):
        super().__init__(*args, **kw)
        self.source = source

    def env(self) -> dict:
        env = super().env()
        env["PYTHONPATH"] = str(self.source) + os.pathsep + env.get("PYTHONPATH", "")
        return env


_SPLIT = re.compile(r"CPU s/1k msgs: \S+ ([0-9.]+), postgres ([0-9.]+)")


def split(r) -> tuple[float, float]:
    """(hub, PostgreSQL) CPU ms per message, from relay.measure's detail line."""
    m = _SPLIT.search(r.detail)
    return (float(m.group(1)), float(m.group(2))) if m else (r.cpu_ms, 0.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="the other source tree (before the change)")
    ap.add_argument("--modes", default="reuse")
    ap.add_argument("--sizes", default="100")
    ap.add_argument("--concurrency", default="1")
    ap.add_argument("--messages", type=int, default=1500)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--processes", type=int, default=0)
    args = ap.parse_args(argv)
    if not (args.base / "hub" / "__init__.py").is_file():
        ap.error(f"--base {args.base}: no hub/__init__.py there")
    print(f"cost bench: {os.cpu_count()} cores, load average {relay.loadavg()} at start; base {args.base.resolve()}"
          f", new {relay.ROOT}")
    workdir = Path(tempfile.mkdtemp(prefix="hub-cost-bench-"))
    workdir.chmod(0o755)
    sink = None
    mtas = []

    def on_term(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        sink = relay.Sink()
        rules = (relay.ROOT / "routing_rules").resolve()
        mtas = [BaseHubMTA(workdir, sink.port, args.processes, None, rules, source=args.base.resolve()),
                relay.HubMTA(workdir, sink.port, args.processes, None, rules)]
        for m in mtas:
            m.start()
        run_no = 0
        for m in mtas:
            run_no += 1
            relay.measure(m, sink, 5, 10, relay.WARMUP, run_no, warmup=True)
        for mode in args.modes.split(","):
            for size in (int(x) for x in args.sizes.split(",")):
                for conc in (int(x) for x in args.concurrency.split(",")):
                    runs = {m.name: [] for m in mtas}
                    for pair in range(args.pairs):
                        for m in (mtas if pair % 2 == 0 else mtas[::-1]):
                            run_no += 1
                            r = relay.measure(m, sink, size, conc, args.messages, run_no, mode=mode)
                            runs[m.name].append(r)
                            if r.missing or r.duplicates or r.errors:
                                print(r.line())
                    print(f"{mode} {size} KB c={conc}, median of {args.pairs} runs each"
                          f" (load average {relay.loadavg()}):")
                    for name, rs in runs.items():
                        med = statistics.median
                        print(f"  {name:4s} {med(r.rate for r in rs):5.0f} msgs/s, CPU ms/msg hub+PG"
                              f" {med(r.cpu_ms for r in rs):.2f} (hub {med(split(r)[0] for r in rs):.2f}, PostgreSQL"
                              f" {med(split(r)[1] for r in rs):.2f}), commits/msg {med(r.commits or 0 for r in rs):.2f},"
                              f" accept p50 {med(r.p50 for r in rs) * 1000:.1f}"
                              f" p99 {med(r.p99 for r in rs) * 1000:.1f} ms", flush=True)
        print(f"load average {relay.loadavg()} at the end")
        return 0
    finally:
        for m in mtas:
            m.stop()
        if sink is not None:
            sink.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
