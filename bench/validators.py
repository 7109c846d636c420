"""Start-up time and memory of `hub serve` with the ANS schematrons: a real `hub serve` (--processes worker
processes, embedded PostgreSQL, test certificates) is started on a fresh data directory (no cached validators),
then again on the same one (validators cached in data_dir/cache/schematron). For each start: the seconds until
/healthz answers 200 (every worker ready: its validators answer), and the resident memory (RSS) of the hub's
processes by kind (supervisor, workers, validator processes; PostgreSQL left out).

Usage: python bench/validators.py [--processes 2] [--root REPO] [--shared ../shared]
`--root` runs another checkout's code (e.g. an export of an older commit) with this script, for a before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pki(base: Path) -> dict:
    import trustme

    ca = trustme.CA(organization_name="Test IGC-Sante")
    ca.cert_pem.write_to_path(str(base / "ca.pem"))
    out = {"ca_file": base / "ca.pem"}
    for name, host in (("server", "hub.example.org"), ("client", "hub.example.org")):
        cert = ca.issue_cert(host, "127.0.0.1", common_name=host, organization_name="GIP HUB REGIONAL")
        cert.private_key_pem.write_to_path(str(base / f"{name}.key"))
        cert.cert_chain_pems[0].write_to_path(str(base / f"{name}.pem"))
        out[name] = (base / f"{name}.pem", base / f"{name}.key")
    return out


def config(path: Path, keys: dict, data: Path, processes: int, shared: Path, root: Path) -> None:
    path.write_text(f"""
[hub]
data_dir = "{data}"
domains = ["hub.example.org"]
processes = {processes}
[smtp]
listen = "127.0.0.1:{free_port()}"
hostname = "hub.example.org"
tls_cert = "{keys['server'][0]}"
tls_key = "{keys['server'][1]}"
client_ca_file = "{keys['ca_file']}"
[http]
listen = "127.0.0.1:{free_port()}"
[delivery]
client_cert = "{keys['client'][0]}"
client_key = "{keys['client'][1]}"
ca_file = "{keys['ca_file']}"
[rules]
dir = "{root / 'routing_rules'}"
watch = false
[transform]
cda_schema = "{shared / 'schemas/cda/CDA_extended.xsd'}"
schematron_dir = "{shared / 'schematrons/ansforge/schematrons'}"
""")


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree(pid: int) -> list[int]:
    out = [pid]
    for p in out:
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def kind(pid: int, supervisor: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    if pid == supervisor:
        return "supervisor"
    if "hub.transform.validate.worker" in cmd:
        return "validators"
    if "postgres" in cmd or "pg_ctl" in cmd:
        return "postgresql"
    return "workers"


def start(cfg: Path, root: Path, http: int) -> tuple[subprocess.Popen, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env["PYTHONPATH"] = str(root)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "hub", "--config", str(cfg), "serve"], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = t0 + 300
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"hub serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=2) as r:
                if r.status == 200:
                    return proc, time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("hub serve did not become ready")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--root", default=str(REPO))
    ap.add_argument("--shared", default=str(REPO.parent / "shared"))
    args = ap.parse_args()
    root, shared = Path(args.root).resolve(), Path(args.shared).resolve()
    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    base = Path(tempfile.mkdtemp(prefix="hub-bench-validators-"))
    try:
        keys = pki(base)
        cfg = base / "hub.toml"
        config(cfg, keys, base / "var", args.processes, shared, root)
        http = int(cfg.read_text().split('[http]\nlisten = "127.0.0.1:')[1].split('"')[0])
        for label in ("fresh data directory", "restart (validators cached)"):
            proc, seconds = start(cfg, root, http)
            time.sleep(2)                                  # the workers' first refreshes settle
            by_kind: dict[str, list[int]] = {}
            for pid in tree(proc.pid):
                by_kind.setdefault(kind(pid, proc.pid), []).append(rss_kb(pid))
            parts = ", ".join(f"{k} {sum(v) // 1024} MB ({len(v)} process{'es' if len(v) > 1 else ''})"
                              for k, v in sorted(by_kind.items()) if k not in ("postgresql", "gone"))
            total = sum(sum(v) for k, v in by_kind.items() if k not in ("postgresql", "gone")) // 1024
            print(f"{root.name} {label}: ready in {seconds:.1f} s; RSS {total} MB: {parts}")
            print(json.dumps({"root": str(root), "start": label, "ready_s": round(seconds, 1), "rss_mb": total}))
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
    finally:
        subprocess.run([sys.executable, "-c", "from hub.db import Embedded; import sys; "
                        "Embedded(__import__('pathlib').Path(sys.argv[1])).stop('immediate')", str(base / "var")],
                       env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
