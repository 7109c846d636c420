"""Rules engine throughput: decisions per second for a 500-rule set over 100,000 synthetic messages, one core.

    .venv/bin/python bench/rules.py [--messages N] [--flat]

The set is shaped like a region's: a few global envelope rules first, then 4 rules per sender account (content,
doc_code, header, size, time, recipient kind, rcpt domain), then the catch-all. `--flat` drops the account scopes
(every rule tried for every message: the engine's worst case). Target: >= 50,000 decisions/s.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hub.rules.engine import Facts  # noqa: E402
from hub.rules.loader import FALLBACK_TRANSFORMS, compile_files  # noqa: E402

CONTENTS = ["hprim_sante", "hl7_oru", "hl7_mdm", "cda", "pdf", "xdm", "other"]
KINDS = ["practitioner", "structure", "unresolved", "paper"]


def rule_set(accounts: int, flat: bool) -> dict[str, str]:
    files = {"00-defaults.yaml": """rules:
  - id: g-tests
    match: {account: [recette-a, recette-b]}
    then: {redirect: sandbox@hub.example.org}
  - id: g-bad-sender
    match: {mail_from: ["*@*.local", "<>"]}
    then: {reject: {code: 553, enhanced: 5.1.7, text: bad sender}}
  - id: g-paper
    match: {recipient_kind: paper}
    then: {redirect: print@hub.example.org}
"""}
    for a in range(accounts):
        scope = "" if flat else f"scope: {{account: acct{a:03d}}}\n"
        files[f"50-acct{a:03d}.yaml"] = scope + f"""rules:
  - id: a{a}-hprim
    match: {{content: [hprim_sante, hprim_net], size: {{max: 10MB}}, rcpt: ["*.dom{a % 7}.fr", "@x{a}.fr"]}}
    then: {{transform: hprim_to_cda_xdm, copy_to: [arch{a}@lab.fr]}}
  - id: a{a}-letters
    match: {{content: cda, doc_code: [11490-0, 34133-9], header: {{X-Prio: {{regex: "^(high|urgent)$"}}}}}}
    then: {{transform: cda_to_xdm, priority: 10}}
  - id: a{a}-night
    match: {{time: {{days: mon-fri, hours: "20:00-07:00"}}, recipient_kind: [practitioner, structure]}}
    then: {{priority: -5}}
  - id: a{a}-unresolved
    match: {{recipient_kind: unresolved, mail_from: "@acct{a}.fr"}}
    then: {{fallback: paper}}
"""
    files["99-catch-all.yaml"] = "rules:\n  - id: default\n    then: {transform: mss_headers}\n"
    return files


def messages(n: int, accounts: int, seed: int = 7) -> list[Facts]:
    rnd = random.Random(seed)
    base = datetime(2024, 5, 13, tzinfo=timezone.utc)
    out = []
    for _ in range(n):
        a = rnd.randrange(accounts + accounts // 10)        # ~10% senders without rules of their own
        out.append(Facts(
            account=f"acct{a:03d}", mail_from=f"s@acct{a}.fr" if rnd.random() < 0.8 else "x@pc.local",
            rcpt=f"dr{rnd.randrange(1000)}@{rnd.choice(['sub.dom3.fr', 'x1.fr', 'med.fr', 'ch.fr'])}",
            recipient_kind=rnd.choice(KINDS[:3] * 5 + ["paper"]), content=rnd.choice(CONTENTS),
            doc_code=rnd.choice([None, "11490-0", "11502-2"]), headers={"x-prio": rnd.choice(["low", "high"])},
            size=rnd.randrange(1_000, 20_000_000), now=base + timedelta(minutes=rnd.randrange(7 * 1440))))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--flat", action="store_true", help="no account scopes: every rule tried for every message")
    args = p.parse_args()
    accounts = 124                                           # 3 + 124 * 4 + 1 = 500 rules
    t0 = time.perf_counter()
    rs = compile_files(rule_set(accounts, args.flat), FALLBACK_TRANSFORMS)
    compile_s = time.perf_counter() - t0
    facts = messages(args.messages, accounts)
    evaluate = rs.evaluate
    for f in facts[:1000]:                                   # warm-up
        evaluate(f)
    t0 = time.perf_counter()
    counts: dict[str, int] = {}
    for f in facts:
        d = evaluate(f)
        counts[d.rule_id] = counts.get(d.rule_id, 0) + 1
    elapsed = time.perf_counter() - t0
    rate = len(facts) / elapsed
    print(f"rules: {len(rs.rules)} ({'flat' if args.flat else 'account-scoped'}), compiled in {compile_s * 1000:.0f} ms")
    print(f"messages: {len(facts)}, distinct rules matched: {len(counts)}, catch-all: {counts.get('default', 0)}")
    print(f"decisions per second: {rate:,.0f}  ({elapsed * 1e6 / len(facts):.2f} us per decision)"
          f"  target >= 50,000: {'ok' if rate >= 50_000 else 'MISSED'}")


if __name__ == "__main__":
    main()
