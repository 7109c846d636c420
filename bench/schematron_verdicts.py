"""The speed-ups of the schematron runner never change a verdict: every document of a larger set is checked by the
hub's validators (optimised) and by the plain recipe of the ISO skeleton (no speed-ups: each pattern walks the
document, no shared assertions, doc() read per run), and the failed assertions (set, rule id, location, role,
message) must be the same.

The set: the ANS samples (../shared/samples/cda), every document the test corpus produces (tests/unit/transform,
CR-BIO N3 from each lab input, LDL-SES N1 from each metadata form), and mutated copies of each (elements removed or
renamed, wrong codes and OIDs, templateIds missing, attributes emptied or removed, text emptied, elements
duplicated, nullFlavors added: tests/unit/transform/tx_support.py `mutate`). Exit 1 on any difference.

Usage: python bench/schematron_verdicts.py [--mutations 8] [--shared ../shared]
The suite runs a fast sample of the same comparison (tests/unit/transform/test_conformance.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "unit" / "transform")]

from lxml import etree  # noqa: E402

from hub.settings import TransformSection  # noqa: E402
from hub.transform import build_registry  # noqa: E402
from hub.transform.validate.schematron import CRBIO, LDLSES, PROFILES, Schematrons, sets_for  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mutations", type=int, default=8, help="mutated copies per document")
    ap.add_argument("--shared", default=str(REPO.parent / "shared"))
    args = ap.parse_args()
    os.environ.setdefault("HUB_SHARED", args.shared)
    import test_conformance as tc
    from tx_support import CORPUS, LOINC_CSV, MUTATIONS, NOW, SAMPLES, SCHEMATRONS, V3, XSD, cdas, mutate

    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    loinc = Path(os.environ.get("TMPDIR", "/tmp")) / "hub-bench-loinc.csv"
    loinc.write_text(LOINC_CSV, encoding="utf-8")
    registry = build_registry(TransformSection(cda_schema=str(XSD), loinc_map=str(loinc), hub_oid="1.2.250.1.999.1",
                                               senders=str(CORPUS / "senders.toml")), "TESTNIL")
    docs: list[tuple[str, bytes]] = [(f"ANS sample {p.name}", p.read_bytes())
                                     for p in sorted((SAMPLES / "cda").glob("*.xml"))]
    for name, chain, message, account, _ in tc.CASES:
        [doc] = cdas(registry.apply(chain, message, {"now": NOW}, account=account).message)
        docs.append((f"corpus {name}", doc))
    base = len(docs)
    for i, (name, doc) in enumerate(list(docs)):
        for j in range(args.mutations):
            kind = MUTATIONS[(i + j) % len(MUTATIONS)]
            docs.append((f"{name} / {kind} #{j}", mutate(doc, 1000 * i + j, kind)))
    everything = (CRBIO, LDLSES, *PROFILES)
    started = time.perf_counter()
    fast = Schematrons(str(SCHEMATRONS))
    fast.warm(everything)
    plain = Schematrons(str(SCHEMATRONS), optimised=False)
    plain.warm(everything)
    print(f"compiled both in {time.perf_counter() - started:.1f} s")
    differ = runs = failing = errors = 0
    times = {"optimised": 0.0, "plain": 0.0}
    for name, doc in docs:
        root = etree.fromstring(doc)
        templates = [t.get("root") for t in root.iterfind("h:templateId", V3)]
        code = root.find("h:code", V3)
        names = sets_for(templates, code.get("code") if code is not None else "")
        results = {}
        for label, validator in (("optimised", fast), ("plain", plain)):
            t = time.process_time()
            try:
                results[label] = sorted(validator.check(doc, templates, "", only=names).failures, key=repr)
            except Exception as exc:          # a rule that cannot run on this document (both must say so)
                results[label] = [f"error: {str(exc).strip()[:200]}"]
            times[label] += time.process_time() - t
        runs += len(names)
        a, b = results["optimised"], results["plain"]
        failing += bool(b)
        errors += bool(b) and isinstance(b[0], str)
        if a != b:
            differ += 1
            print(f"DIFFERENT: {name}: {len(a)} failed assertions optimised, {len(b)} plain")
            for f in sorted(set(a) ^ set(b), key=repr)[:5]:
                print(f"  {'optimised' if f in a else 'plain'} only: {f}")
    print(f"{len(docs)} documents ({base} as produced or published, {len(docs) - base} mutated), {runs} schematron "
          f"runs, {failing} documents with failed assertions ({errors} on which a rule cannot run): {differ} with a "
          "different verdict")
    print(f"CPU per document: optimised {times['optimised'] / len(docs) * 1000:.1f} ms, plain "
          f"{times['plain'] / len(docs) * 1000:.1f} ms")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
