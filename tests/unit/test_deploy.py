"""The deployment files: alert rules valid for Prometheus, the systemd unit hardened and notify-typed, the
container files keeping the local database out and the rules visible, the package metadata in its current form.
(The dashboard's queries are checked against a live /metrics in tests/e2e/test_serve.py.)"""

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def test_alert_rules_pass_promtool():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (scripts/dev test installs the Debian package prometheus as root)")
    proc = subprocess.run([promtool, "check", "rules", str(DEPLOY / "alerts.yml")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_alerts_cover_what_operators_watch():
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert {"HubQueueGrowing", "HubDeadLetters", "HubDomainFailing", "HubCertificateExpiring", "HubTrustListStale",
            "HubDirectoryStale", "HubDatabaseDown", "HubAuditSealerStalled"} <= names
    by_name = {r["alert"]: r["expr"] for r in rules}
    assert "30 * 86400" in by_name["HubCertificateExpiring"] and "48 * 3600" in by_name["HubTrustListStale"]
    assert "8 * 86400" in by_name["HubDirectoryStale"]
    assert "hub_transform_conformance_unchecked" in by_name["HubCdaConformanceUnchecked"]


def dashboard_metric_names() -> set[str]:
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 12
    return {m for e in exprs for m in re.findall(r"\bhub_[a-z0-9_]+", e)}


def test_systemd_unit_is_hardened_and_notify():
    unit = (DEPLOY / "hub.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "RestartPreventExitStatus=2", "KillMode=mixed", "NotifyAccess=main"):
        assert line in unit
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    proc = subprocess.run([analyze, "security", "--offline=true", str(DEPLOY / "hub.service")], capture_output=True,
                          text=True, timeout=60)
    if "Unknown option" in proc.stderr or "unrecognized option" in proc.stderr:
        pytest.skip("this systemd-analyze has no --offline")
    m = re.search(r"Overall exposure level for hub.service: ([0-9.]+)", proc.stdout)
    assert m, proc.stdout[-500:] + proc.stderr
    assert float(m.group(1)) <= 2.5, proc.stdout[-300:]


def test_container_files():
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert "var/" in ignore and ".venv/" in ignore
    docker = (ROOT / "Dockerfile").read_text()
    assert "COPY routing_rules /opt/hub/routing_rules" in docker and "HUB_RULES_DIR=/opt/hub/routing_rules" in docker
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    hub, db = compose["services"]["hub"], compose["services"]["db"]
    assert hub["restart"] and db["restart"]
    assert "/etc/hub:/etc/hub:ro" in hub["volumes"]           # so the rules must not live there in the image
    assert "db_app_password" in db["secrets"]
    assert any("postgres-init.sh" in v for v in db["volumes"])
    init = (DEPLOY / "postgres-init.sh").read_text()
    assert "CREATE ROLE hub_app LOGIN PASSWORD" in init and "/run/secrets/db_app_password" in init


def test_package_metadata():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"       # PEP 639 string, not the deprecated table
    names = {re.split(r"[<>=; \[]", d)[0].lower() for d in meta["project"]["dependencies"]}
    module = {"prometheus-client": "prometheus_client", "dnspython": "dns", "pyyaml": "yaml"}
    used_by = {"rl-accel": "reportlab"}        # C accelerators that another dependency imports (3x faster PDF copy)
    source = "\n".join(p.read_text() for p in (ROOT / "hub").rglob("*.py"))
    for name in names:                                     # every dependency is one the code uses
        mod = module.get(name, used_by.get(name, name).replace("-", "_"))
        assert re.search(rf"\b(import|from) {mod}\b|find_spec\(\"{mod}\"\)", source), name
