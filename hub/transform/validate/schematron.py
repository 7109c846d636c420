"""ANS CI-SIS schematron validation (the official rules, run by SaxonC-HE).

The rules are the ANS files in a folder the operator names (setting `transform.schematron_dir`: the
`ansforge/schematrons` folder, e.g. `../shared/schematrons/ansforge/schematrons`); nothing of them is copied into
the hub. The engine is the ISO Schematron XSLT1 skeleton that ships inside the `lxml` wheel
(`lxml/isoschematron/resources/xsl/iso-schematron-xslt1/`: include -> abstract expand -> svrl), run by `saxonche`,
with three in-memory adjustments (no file is edited): the schema's `queryBinding="xslt2"` is read as `xslt`, the
skeleton's `attributes` parameter is `false` (SaxonC cannot compile the CR-BIO rules otherwise), and the generated
stylesheet is marked version 2.0 (its rules use XPath 2 functions).

`Schematrons(folder)` compiles nothing until a set is first used, then keeps the compiled validators for the life
of the process (compiling the CR-BIO set costs a few seconds; running it on a document, a few milliseconds).
SaxonC holds Python's GIL while it runs, so a check in a worker thread would still stall the event loop (SMTP
intake) for its whole duration: `IsolatedSchematrons` (what the registry uses) runs the validators in a child
process of their own, compiled once, and the calling thread waits on a pipe without the GIL.
`check(cda_bytes, template_ids)` picks the volet and profile sets that apply to the document from its templateIds and
returns a `Conformance`: the failed assertions with their rule id, schematron and location (an XPath), never the
text of the document. Thread-safe: each thread runs its own clone of a compiled validator.

Trusts its input: the documents are the hub's own output, or senders' CDAs already parsed by `SafeXml`. A rules
folder that is missing or does not compile is a ConfigError naming it (start-up check).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import astuple, dataclass
from pathlib import Path

from lxml import etree

from hub.errors import ConfigError, TransformError

# the sets of rules, by file, relative to the `schematrons` folder of the ANS repository
CRBIO = "CI-SIS_BIO-CR-BIO_2024.01.sch"
LDLSES = "CI-SIS_LDL-SES_2022.01.sch"
PROFILES = ("profils/CI-SIS_ModelesDeContenusCDA.sch", "profils/IHE.sch", "profils/CI-SIS_Modeles_ANS.sch",
            "profils/structurationMinimale/ASIP-STRUCT-MIN-StrucMin.sch")
T_CRBIO, T_LDLSES, LETTER = "1.2.250.1.213.1.1.1.55", "1.2.250.1.213.1.1.1.29", "11490-0"
SKELETON = Path(etree.__file__).parent / "isoschematron" / "resources" / "xsl" / "iso-schematron-xslt1"
SVRL = "http://purl.oclc.org/dsdl/svrl"
_QUERY_BINDING = re.compile(r'(<(?:\w+:)?schema\b[^>]*?\squeryBinding\s*=\s*)"xslt2"', re.S)
_VERSION = re.compile(r'(<(?:xsl:)?stylesheet\b[^>]*?\sversion\s*=\s*)"1\.0"', re.S)
_TEXT = re.compile(r"\s+")
_SVRL_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)
_STEP = re.compile(r"\*:?\[local-name\(\)='([^']+)'(?: and namespace-uri\(\)='[^']*')?\]")


def compact(location: str) -> str:
    """SVRL's `/*[local-name()='author' and namespace-uri()='urn:hl7-org:v3'][1]` -> `/author[1]`."""
    return _STEP.sub(r"\1", location)


@dataclass(frozen=True)
class Failure:
    schematron: str            # file name of the set, e.g. "CI-SIS_BIO-CR-BIO_2024.01.sch"
    rule: str                  # the assertion's id, or its pattern's, or its test when it has neither
    location: str              # XPath of the node the rule fired on
    role: str = ""             # "error", "warning"... as the ANS wrote it ("" = error)
    message: str = ""          # the ANS message (the rule's text; it may quote values of the document)

    def brief(self) -> str:
        """Rule id and location only: what the audit trail records (no value of the document)."""
        return f"{self.schematron}:{self.rule} at {self.location}"


@dataclass(frozen=True)
class Conformance:
    checked: tuple[str, ...]            # the sets run
    failures: tuple[Failure, ...]

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        if not self.checked:
            return "not_checked"
        if self.ok:
            return f"conformant ({len(self.checked)} schematrons)"
        return f"{len(self.failures)} failed assertion(s): " + "; ".join(f.brief() for f in self.failures[:5]) + (
            " ..." if len(self.failures) > 5 else "")


def sets_for(template_ids: tuple[str, ...] | list[str], code: str = "") -> tuple[str, ...]:
    """The schematrons that apply to a CDA with these header templateIds and document code: its volet (CR-BIO N3;
    LDL-SES for letters, N1 or N3) and the profiles (every CI-SIS document)."""
    volet: tuple[str, ...] = ()
    if T_CRBIO in template_ids:
        volet = (CRBIO,)
    elif T_LDLSES in template_ids or code == LETTER:
        volet = (LDLSES,)
    return volet + PROFILES


class _Compiled:
    """One compiled schematron: the SaxonC executable, cloned per thread."""

    def __init__(self, name: str, executable) -> None:
        self.name = name
        self._executable = executable
        self._local = threading.local()

    def executable(self):
        exe = getattr(self._local, "exe", None)
        if exe is None:
            exe = self._local.exe = self._executable.clone()
        return exe


class Schematrons:
    """The compiled ANS schematrons of one rules folder. Build once per process (the registry does)."""

    def __init__(self, folder: str, *, sets: tuple[str, ...] | None = None, optimised: bool = True):
        """`optimised=False`: the skeleton's stylesheets as generated (slower; the same failed assertions, which
        the test suite checks on mutated documents)."""
        self.folder = Path(folder) if folder else None
        self.optimised = optimised
        self._compiled: dict[str, _Compiled] = {}
        self._lock = threading.Lock()
        self._proc = None
        if self.folder is None:
            return
        for name in sets or (CRBIO, LDLSES, *PROFILES):
            if not (self.folder / name).is_file():
                raise ConfigError(f"transform.schematron_dir: {self.folder / name} not found "
                                  "(expected the ANS `schematrons` folder)")
        try:
            import saxonche  # noqa: F401
        except ImportError:
            raise ConfigError("transform.schematron_dir is set but the saxonche package is not installed") from None

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def _processor(self):
        if self._proc is None:
            from saxonche import PySaxonProcessor

            self._proc = PySaxonProcessor(license=False)
        return self._proc

    def compiled(self, name: str) -> _Compiled:
        found = self._compiled.get(name)
        if found is not None:
            return found
        with self._lock:                       # compile once, whatever the number of threads asking
            found = self._compiled.get(name)
            if found is None:
                found = self._compiled[name] = _Compiled(name, self._compile(name))
        return found

    def warm(self, names: tuple[str, ...] | None = None) -> None:
        """Compile every set now (start-up), so that no document waits for it. No rules folder: nothing to do."""
        if self.folder is None:
            return
        for name in names or (CRBIO, LDLSES, *PROFILES):
            self.compiled(name)

    def _compile(self, name: str):
        from saxonche import PySaxonApiError

        assert self.folder is not None
        path = (self.folder / name).resolve()
        proc = self._processor()
        xslt = proc.new_xslt30_processor()
        try:
            text = path.read_text(encoding="utf-8")
            text = _QUERY_BINDING.sub(r'\1"xslt"', text, count=1)
            builder = proc.new_document_builder()
            builder.set_base_uri(path.as_uri())
            node = builder.parse_xml(xml_text=text)
            for step in ("iso_dsdl_include.xsl", "iso_abstract_expand.xsl"):
                exe = xslt.compile_stylesheet(stylesheet_file=str(SKELETON / step))
                expanded = exe.transform_to_string(xdm_node=node)
                node = _reparse(proc, expanded, path)
            exe = xslt.compile_stylesheet(stylesheet_file=str(SKELETON / "iso_svrl_for_xslt1.xsl"))
            exe.set_parameter("attributes", proc.make_string_value("false"))
            exe.set_parameter("generate-fired-rule", proc.make_string_value("false"))
            generated = _VERSION.sub(r'\1"2.0"', exe.transform_to_string(xdm_node=node), count=1)
            if self.optimised:
                generated = optimise(generated, guards(expanded), header_only(expanded))
            return xslt.compile_stylesheet(stylesheet_node=_reparse(proc, generated, path))
        except (OSError, UnicodeDecodeError, PySaxonApiError) as exc:
            raise ConfigError(f"transform.schematron_dir: {path} does not compile: {_line(str(exc))}") from None

    def check(self, cda: bytes | str, template_ids: tuple[str, ...] | list[str], code: str = "", *,
              only: tuple[str, ...] | None = None) -> Conformance:
        """Run the sets that apply to this document (or `only` those). The CDA is well-formed XML (the caller
        parsed it)."""
        if self.folder is None:
            return Conformance((), ())
        names = only or sets_for(template_ids, code)
        proc = self._processor()
        node = proc.parse_xml(xml_text=cda.decode("utf-8")) if isinstance(cda, bytes) else proc.parse_xml(
            xml_text=cda)
        failures: list[Failure] = []
        for name in names:
            svrl = self.compiled(name).executable().transform_to_string(xdm_node=node)
            failures.extend(_failures(name, svrl))
        return Conformance(names, tuple(failures))


# ------------------------------------------------------------------ speed, with the same failed assertions
#
# The skeleton's validator walks the whole document twice per pattern (an `apply-templates` in the default mode,
# which outputs nothing, inside each `svrl:active-pattern`, then the pattern's own mode): the CI-SIS profiles have
# ~200 patterns each, most for templates a given document does not use. Two changes that cannot change a failed
# assertion: the default-mode walk is dropped (it only reaches the "strip text" template), and a pattern all of whose
# rule contexts require an element with a given templateId (`*[cda:templateId/@root='X']...`, no `or`, `|` nor
# `not(`) runs only when the document has such a templateId somewhere (else none of its rules can fire).
# And a pattern whose every rule context is an absolute path from `//hl7:ClinicalDocument[...]` that cannot reach
# below `ClinicalDocument/component/*` (the "structuration minimale" rules, which check the header) does not walk
# the body's elements, unless the body holds another ClinicalDocument (then it walks it all, as before).

_XSL = "http://www.w3.org/1999/XSL/Transform"
_SCH = "http://purl.oclc.org/dsdl/schematron"
_GUARD = re.compile(r"templateId(?:/@root\s*=\s*|\[\s*@root\s*=\s*)(['\"])([0-9.]+)\1")
_UNGUARDED = re.compile(r"\sor\s|\||not\s*\(|!=")


def _steps(path: str) -> list[str]:
    """`a[x/y]/b//c` -> ['a[x/y]', 'b', '', 'c'] (slashes inside predicates or strings do not split)."""
    steps, depth, quote, cur = [], 0, "", ""
    for ch in path:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "/" and depth == 0:
            steps.append(cur)
            cur = ""
            continue
        cur += ch
    return steps + [cur]


def header_only(expanded: str) -> frozenset[str]:
    """Pattern ids none of whose rules can match an element below ClinicalDocument/component/*."""
    root = etree.fromstring(expanded.encode("utf-8"), _SVRL_PARSER)
    out = set()
    for pattern in root.iter(f"{{{_SCH}}}pattern"):
        ident = pattern.get("id")
        contexts = [r.get("context") for r in pattern.findall(f"{{{_SCH}}}rule") if r.get("abstract") != "true"]
        if not ident or not contexts:
            continue
        for context in contexts:
            if context == "/":
                continue
            steps = _steps(context or "")
            # ['', '', 'hl7:ClinicalDocument[...]', step 1, step 2, ...]
            if len(steps) < 3 or steps[:2] != ["", ""] or not steps[2].startswith("hl7:ClinicalDocument["):
                break
            below = steps[3:]
            names = [s.split("[", 1)[0] for s in below]
            if "" in below or any("::" in n and not n.startswith("child::") for n in names):
                break                                            # '//' or another axis after the document element
            first = below[0].split("[", 1)[0] if below else ""
            if first in ("hl7:component", "*", "node()", "hl7:*") and len(below) > 2:
                break
        else:
            out.add(ident)
    return frozenset(out)


def guards(expanded: str) -> dict[str, frozenset[str]]:
    """pattern id -> the templateIds one of which the document must contain for the pattern to fire."""
    root = etree.fromstring(expanded.encode("utf-8"), _SVRL_PARSER)
    out: dict[str, frozenset[str]] = {}
    for pattern in root.iter(f"{{{_SCH}}}pattern"):
        ident = pattern.get("id")
        rules = pattern.findall(f"{{{_SCH}}}rule")
        needed: set[str] = set()
        for rule in rules:
            context = rule.get("context") or ""
            found = {m.group(2) for m in _GUARD.finditer(context)}
            if not found or _UNGUARDED.search(context):
                break
            needed |= found
        else:
            if ident and rules:
                out[ident] = frozenset(needed)
    return out


def optimise(generated: str, pattern_guards: dict[str, frozenset[str]],
             headers: frozenset[str] = frozenset()) -> str:
    root = etree.fromstring(generated.encode("utf-8"), _SVRL_PARSER)
    main = next(t for t in root.iterfind(f"{{{_XSL}}}template") if t.get("match") == "/" and not t.get("mode"))
    output = next(iter(main.iterchildren(f"{{{SVRL}}}schematron-output")), None)
    if output is None:
        return generated
    tids = etree.Element(f"{{{_XSL}}}variable", name="hub-tids",
                         select="distinct-values(//*:templateId/@root)")
    main.insert(main.index(output), tids)
    children = list(output)
    for i, el in enumerate(children):
        if el.tag != f"{{{SVRL}}}active-pattern":
            continue
        for walk in el.findall(f"{{{_XSL}}}apply-templates"):
            if walk.get("select") is None and walk.get("mode") is None:
                el.remove(walk)
        ident = next((a.text for a in el.iterfind(f"{{{_XSL}}}attribute") if a.get("name") == "id"), None)
        run = children[i + 1] if i + 1 < len(children) else None
        if ident in headers and run is not None and run.get("mode"):
            prune = etree.SubElement(root, f"{{{_XSL}}}template", match="/*/*[local-name() = 'component']/*",
                                     priority="-1.9", mode=run.get("mode"))
            cond = etree.SubElement(prune, f"{{{_XSL}}}if", test="descendant::*[local-name() = 'ClinicalDocument']")
            etree.SubElement(cond, f"{{{_XSL}}}apply-templates", select="*", mode=run.get("mode"))
        needed = pattern_guards.get(ident or "")
        if not needed or run is None or run.tag != f"{{{_XSL}}}apply-templates" or run.get("select") != "/":
            continue
        test = "$hub-tids = (" + ", ".join(f"'{t}'" for t in sorted(needed)) + ")"
        guard = etree.Element(f"{{{_XSL}}}if", test=test)
        el.addprevious(guard)
        guard.append(el)
        guard.append(run)
    return etree.tostring(root, encoding="unicode")


def _reparse(proc, text: str, base: Path):
    builder = proc.new_document_builder()
    builder.set_base_uri(base.as_uri())
    return builder.parse_xml(xml_text=text)


def _line(text: str) -> str:
    return _TEXT.sub(" ", text).strip()[:300]


def _failures(name: str, svrl: str) -> list[Failure]:
    root = etree.fromstring(svrl.encode("utf-8"), _SVRL_PARSER)
    out = []
    pattern = ""
    short = os.path.basename(name)
    for el in root:
        if not isinstance(el.tag, str):
            continue
        tag = etree.QName(el).localname
        if tag == "active-pattern":
            pattern = el.get("id") or el.get("name") or ""
        elif tag == "failed-assert":
            text = el.find(f"{{{SVRL}}}text")
            out.append(Failure(short, el.get("id") or pattern or el.get("test") or "", compact(el.get("location") or ""),
                               el.get("role") or "", _line("".join(text.itertext())) if text is not None else ""))
    return out


# ------------------------------------------------------------------ in a child process (the GIL stays free)
#
# The child is `python -m hub.transform.validate.worker FOLDER [SET...]`; it answers one JSON line per request
# line on its stdin: {"cda", "templates", "code", "only"} -> {"checked", "failures"} or {"error"}.


def serve(folder: str, sets: tuple[str, ...] | None, reader, writer) -> None:
    try:
        schematrons = Schematrons(folder, sets=sets)
        schematrons.warm(sets)
    except ConfigError as exc:
        writer.write(json.dumps({"error": str(exc)}) + "\n")
        writer.flush()
        return
    writer.write(json.dumps({"ready": True}) + "\n")
    writer.flush()
    for line in reader:
        try:
            req = json.loads(line)
            only = tuple(req["only"]) if req.get("only") else None
            result = schematrons.check(req["cda"], tuple(req["templates"]), req["code"], only=only)
            answer = {"checked": list(result.checked), "failures": [list(astuple(f)) for f in result.failures]}
        except Exception as exc:                   # one document SaxonC cannot run on: say so, keep serving
            answer = {"failed": f"{type(exc).__name__}: {_line(str(exc))}"}
        writer.write(json.dumps(answer, ensure_ascii=True) + "\n")
        writer.flush()


STRUCMIN = PROFILES[3]


class _Worker:
    """One validator process for some sets: started on first use, started again if it died."""

    def __init__(self, folder: Path, sets: tuple[str, ...]):
        self.folder, self.sets = folder, sets
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self.stop()                                # a validator that died: its pipes closed before the next one
        command = [sys.executable, "-m", "hub.transform.validate.worker", str(self.folder), *self.sets]
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                encoding="utf-8", bufsize=1)
        line = proc.stdout.readline()
        try:
            first = json.loads(line) if line else {"error": "the validator process stopped while compiling"}
        except ValueError:
            first = {"error": f"the validator process said: {_line(line)}"}
        self._proc = proc
        if not first.get("ready"):
            self.stop()
            raise ConfigError(f"transform.schematron_dir: {first.get('error')}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait(5)
            for pipe in (proc.stdin, proc.stdout):
                try:
                    pipe.close()
                except OSError:                    # a pipe to a dead process refuses its last flush: drop it
                    pipe.buffer.raw.close()

    def send(self, request: str) -> None:
        self.start()
        self._proc.stdin.write(request)
        self._proc.stdin.flush()

    def receive(self) -> dict:
        line = self._proc.stdout.readline() if self._proc is not None else ""
        if not line:
            raise EOFError
        return json.loads(line)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None


class IsolatedSchematrons:
    """The same interface as `Schematrons`, the work done in child processes: by default two, one for the
    structuration minimale profile (the costliest) and one for the other sets, which run on a document at the same
    time (the second core does half of the work: the latency of a check is the slower of the two)."""

    def __init__(self, folder: str, *, sets: tuple[str, ...] | None = None):
        self._local = Schematrons(folder, sets=sets)   # checks the folder now (start-up); compiles nothing here
        self.folder = self._local.folder
        self._lock = threading.Lock()
        groups = (sets,) if sets else ((STRUCMIN,), tuple(n for n in (CRBIO, LDLSES, *PROFILES) if n != STRUCMIN))
        self._workers = [_Worker(self.folder, g) for g in groups] if self.folder is not None else []

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    @property
    def pids(self) -> list[int | None]:
        return [w.pid for w in self._workers]

    def warm(self, names: tuple[str, ...] | None = None) -> None:
        with self._lock:
            for worker in self._workers:          # started one after the other, then compiling side by side
                worker.start()

    def check(self, cda: bytes | str, template_ids: tuple[str, ...] | list[str], code: str = "", *,
              only: tuple[str, ...] | None = None) -> Conformance:
        if self.folder is None:
            return Conformance((), ())
        names = only or sets_for(template_ids, code)
        text = cda.decode("utf-8") if isinstance(cda, (bytes, bytearray)) else cda
        jobs = []
        for worker in self._workers:
            mine = [n for n in names if n in worker.sets]
            if mine:
                jobs.append((worker, json.dumps({"cda": text, "templates": list(template_ids), "code": code,
                                                 "only": mine}) + "\n"))
        answers = []
        with self._lock:
            for worker, request in jobs:          # all sent first: the workers run at the same time
                try:
                    worker.send(request)
                except (OSError, ValueError):
                    worker.stop()
            for worker, request in jobs:
                answers.append(self._answer(worker, request))
        failed = next((a["failed"] for a in answers if "failed" in a), None)
        if failed is not None:
            raise TransformError(f"the ANS schematrons could not run on the document: {failed}")
        order = {os.path.basename(n): i for i, n in enumerate(names)}
        failures = sorted((Failure(*f) for a in answers for f in a["failures"]),
                          key=lambda f: order.get(f.schematron, len(order)))
        return Conformance(tuple(names), tuple(failures))

    @staticmethod
    def _answer(worker: _Worker, request: str) -> dict:
        for attempt in (1, 2):                     # a validator that died is started again, once
            try:
                if attempt == 2:
                    worker.send(request)
                return worker.receive()
            except (EOFError, OSError, ValueError):
                worker.stop()
        raise TransformError("the ANS schematron validator process stopped")

    def close(self) -> None:
        with self._lock:
            for worker in self._workers:
                worker.stop()
