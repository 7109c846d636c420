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

import contextlib
import copy
import hashlib
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
PRE_EVALUATE_DOC = "http://saxon.sf.net/feature/preEvaluateDocFunction"
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

    def __init__(self, folder: str, *, sets: tuple[str, ...] | None = None, optimised: bool = True,
                 cache: str | Path | None = None):
        """`optimised=False`: the skeleton's stylesheets as generated (slower; the same failed assertions, which
        the test suite checks on mutated documents). `cache`: a folder where the generated validators are kept
        across restarts (keyed by the rules' content, this module and the engine's versions; `hub serve` uses
        data_dir/cache/schematron): a start then only compiles them."""
        self.folder = Path(folder) if folder else None
        self.optimised = optimised
        self.cache = Path(cache) if cache else None
        self._key: str | None = None
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
            if self.optimised:     # the value-set files the rules read with doc('...'): loaded once, not per document
                self._proc.set_configuration_property(PRE_EVALUATE_DOC, "true")
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
        cached = self._cached(name)
        if cached is not None:
            try:
                return xslt.compile_stylesheet(stylesheet_node=_reparse(proc, cached.read_text("utf-8"), path))
            except (OSError, UnicodeDecodeError, PySaxonApiError):
                pass                               # unreadable or damaged: generated again below
        try:
            generated = self._generate(proc, xslt, path)
            compiled = xslt.compile_stylesheet(stylesheet_node=_reparse(proc, generated, path))
        except (OSError, UnicodeDecodeError, PySaxonApiError) as exc:
            raise ConfigError(f"transform.schematron_dir: {path} does not compile: {_line(str(exc))}") from None
        if cached is not None:
            _write_atomic(cached, generated)
        return compiled

    def _cached(self, name: str) -> Path | None:
        """Where the generated validator of this set is kept, or None (no cache)."""
        if self.cache is None or self.folder is None:
            return None
        if self._key is None:
            self._key = cache_key(self.folder, self.optimised)
            for stale in self.cache.glob("*.xsl"):          # validators of older rules or an older hub
                if not stale.name.startswith(self._key[:24]):
                    with contextlib.suppress(OSError):
                        stale.unlink()
        return self.cache / f"{self._key[:24]}-{name.replace('/', '_')}.xsl"

    def _generate(self, proc, xslt, path: Path) -> str:
        """The skeleton's validator for one schematron, optimised unless `optimised=False`."""
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
        return generated

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
# The skeleton's validator walks the whole document once per pattern, in the pattern's mode, trying every node
# against the pattern's rules (and a second time in the default mode, which outputs nothing). The changes below
# cannot change a failed assertion, and the test suite checks it on mutated documents (bench/schematron_verdicts.py
# on a larger set):
#  * the default-mode walk is dropped (it only reaches the "strip text" template);
#  * select, don't walk: a node matches a pattern P exactly when it is in the result of the expression `//(P)`
#    (XSLT 2.0, 5.5.3), so the nodes a pattern's rules can fire on are the union of its rule contexts, evaluated
#    as expressions, in document order. The pattern's mode is applied to that union instead of the walk, and its
#    rule templates no longer walk their children: each such node is met once, in the same order, and the template
#    priorities still decide which rule of the pattern fires (the first), as in the walk. Done for patterns whose
#    rule contexts select elements by name tests (`//hl7:ClinicalDocument[...]/hl7:author/*[...]`, the
#    "structuration minimale" rules; `*[cda:templateId/@root='X']/cda:code`, most CI-SIS rules); the shared first
#    step is evaluated once per document (`//X` in a variable, `*[templateId/@root='X']` through an xsl:key on the
#    templateIds). A pattern with no rule for an element (only `/`, or none) no longer walks at all;
#  * a pattern whose rules all need an element with a given templateId (`*[cda:templateId/@root='X']...`, no `or`,
#    `|` nor `not(`) runs only when the document has such a templateId somewhere (else none of its rules can fire);
#  * a pattern left to the walk whose every rule context is an absolute path from `//hl7:ClinicalDocument[...]`
#    that cannot reach below `ClinicalDocument/component/*` does not walk the body's elements, unless the body
#    holds another ClinicalDocument (then it walks it all, as before).

_XSL = "http://www.w3.org/1999/XSL/Transform"
_SCH = "http://purl.oclc.org/dsdl/schematron"
_V3 = "urn:hl7-org:v3"
_GUARD = re.compile(r"templateId(?:/@root\s*=\s*|\[\s*@root\s*=\s*)(['\"])([0-9.]+)\1")
_UNGUARDED = re.compile(r"\sor\s|\||not\s*\(|!=")
# a step that selects elements of the child axis by a name test: `hl7:author`, `*`, `cda:*`, with any predicates
_NAME_STEP = re.compile(r"(?:child::)?(?:\*|[A-Za-z_][\w.-]*(?::(?:[A-Za-z_][\w.-]*|\*))?)(?:\[.*\])?", re.S)
# `*[cda:templateId/@root='X']` or `*[cda:templateId[@root='X']]` (any element with that templateId)
_KEYED = re.compile(r"\*\[\s*(?:\./)?(\w+):templateId(?:\s*/\s*@root\s*=\s*(['\"])([^'\"]*)\2\s*"
                    r"|\[\s*@root\s*=\s*(['\"])([^'\"]*)\4\s*\]\s*)\]")


def _split(text: str, sep: str) -> list[str]:
    """Split at `sep` outside predicates, parentheses and strings: `a[x/y]/b//c` -> ['a[x/y]', 'b', '', 'c']."""
    parts, depth, quote, cur = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    return parts + [cur]


def _steps(path: str) -> list[str]:
    return _split(path, "/")


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


class _Selector:
    """Rule contexts -> the expression selecting every node they match (see above), or None when a context is of
    a form this does not handle (the pattern keeps its walk). Shared first steps become variables and keys."""

    def __init__(self, nsmap: dict):
        self.nsmap = nsmap
        self.variables: dict[str, str] = {}      # expression -> variable name
        self.keys: dict[str, str] = {}           # prefix of urn:hl7-org:v3 -> key name

    def select(self, contexts: list[str]) -> str | None:
        trie: dict = {}
        whole = False
        for context in contexts:
            for alternative in _split(context.strip(), "|"):
                alternative = alternative.strip()
                if alternative == "/":
                    whole = True
                    continue
                path = self._path(alternative)
                if path is None:
                    return None
                node = trie
                for step in path:
                    node = node.setdefault(step, {})
                node[None] = {}                  # a rule selects the nodes of this path itself
        parts = (["/"] if whole else []) + [self._expr(step, sub) for step, sub in trie.items()]
        return " | ".join(parts) if parts else "()"

    def _path(self, context: str) -> list[str] | None:
        steps = _steps(context)
        if steps[0] == "":                       # absolute: `//first/...` (a lone `/first/...`: kept as is)
            if len(steps) < 3 or steps[1] != "":
                return None
            first, rest = steps[2], steps[3:]
        else:
            first, rest = steps[0], steps[1:]
        if not _NAME_STEP.fullmatch(first) or (rest and rest[-1] == "") or any(
                s and not _NAME_STEP.fullmatch(s) for s in rest):
            return None
        # '' (a `//` inside the path) is descendant-or-self::node(): a step of its own in the union's tree
        return [self._first(first)] + ["descendant-or-self::node()" if s == "" else s for s in rest]

    def _first(self, step: str) -> str:
        keyed = _KEYED.fullmatch(step)
        if keyed and self.nsmap.get(keyed.group(1)) == _V3:
            prefix = keyed.group(1)
            value = keyed.group(3) if keyed.group(3) is not None else keyed.group(5)
            name = self.keys.setdefault(prefix, f"hub-tid-{len(self.keys) + 1}")
            return f"key('{name}', {_literal(value)})"
        expr = f"//{step}"
        return "$" + self.variables.setdefault(expr, f"hub-n{len(self.variables) + 1}")

    def _expr(self, step: str, sub: dict) -> str:
        if set(sub) == {None}:
            return step
        inner = ["."] if None in sub else []
        inner += [self._expr(s, t) for s, t in sub.items() if s is not None]
        return f"{step}/({' | '.join(inner)})"


def _literal(value: str) -> str:
    return f"'{value}'" if "'" not in value else f'"{value}"'


def optimise(generated: str, pattern_guards: dict[str, frozenset[str]],
             headers: frozenset[str] = frozenset()) -> str:
    root = etree.fromstring(generated.encode("utf-8"), _SVRL_PARSER)
    main = next(t for t in root.iterfind(f"{{{_XSL}}}template") if t.get("match") == "/" and not t.get("mode"))
    output = next(iter(main.iterchildren(f"{{{SVRL}}}schematron-output")), None)
    if output is None:
        return generated
    by_mode: dict[str, list] = {}
    for template in root.iterfind(f"{{{_XSL}}}template"):
        if template.get("mode"):
            by_mode.setdefault(template.get("mode"), []).append(template)
    selector = _Selector(dict(root.nsmap))
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
        if run is None or run.tag != f"{{{_XSL}}}apply-templates" or run.get("select") != "/" or not run.get("mode"):
            continue
        mode = run.get("mode")
        if not _select(run, by_mode.get(mode, []), selector) and ident in headers:
            prune = etree.SubElement(root, f"{{{_XSL}}}template", match="/*/*[local-name() = 'component']/*",
                                     priority="-1.9", mode=mode)
            cond = etree.SubElement(prune, f"{{{_XSL}}}if", test="descendant::*[local-name() = 'ClinicalDocument']")
            etree.SubElement(cond, f"{{{_XSL}}}apply-templates", select="*", mode=mode)
        needed = pattern_guards.get(ident or "")
        if not needed:
            continue
        test = "$hub-tids = (" + ", ".join(f"'{t}'" for t in sorted(needed)) + ")"
        guard = etree.Element(f"{{{_XSL}}}if", test=test)
        el.addprevious(guard)
        guard.append(el)
        guard.append(run)
    for expr, name in selector.variables.items():
        main.insert(main.index(tids), etree.Element(f"{{{_XSL}}}variable", name=name, select=expr))
    for prefix, name in selector.keys.items():
        root.insert(0, etree.Element(f"{{{_XSL}}}key", name=name, match=f"*[{prefix}:templateId]",
                                     use=f"{prefix}:templateId/@root"))
    _share(root, by_mode)
    return etree.tostring(root, encoding="unicode")


_VARIABLE = re.compile(r"\$([A-Za-z_][\w.-]*)")


def _share(root, by_mode: dict[str, list]) -> None:
    """An assertion that several rules share (the "structuration minimale" rules inherit the same data-type
    assertions through `extends`: 13,000 copies of 900 distinct ones) is written once, as a named template that
    each rule calls: call-template keeps the context node, position and size, and the variables of the rule that
    the assertion reads are passed as parameters of the same names. Compiling and holding the rules then costs a
    fraction of the time and memory."""
    seen: dict[tuple, list] = {}
    for templates in by_mode.values():
        for template in templates:
            local: set[str] = set()
            for child in template:
                if child.tag in (f"{{{_XSL}}}variable", f"{{{_XSL}}}param"):
                    local.add(child.get("name"))
                elif child.tag in (f"{{{_XSL}}}choose", f"{{{_XSL}}}if"):
                    names = {m.group(1) for el in child.iter() if isinstance(el.tag, str)
                             for value in el.attrib.values() for m in _VARIABLE.finditer(value)}
                    key = (etree.tostring(child), tuple(sorted(names & local)))
                    seen.setdefault(key, []).append(child)
    count = 0
    for (_, params), uses in seen.items():
        if len(uses) < 2:
            continue
        count += 1
        name = f"hub-assert-{count}"
        shared = etree.SubElement(root, f"{{{_XSL}}}template", name=name)
        for param in params:
            etree.SubElement(shared, f"{{{_XSL}}}param", name=param)
        shared.append(copy.deepcopy(uses[0]))
        for use in uses:
            call = etree.Element(f"{{{_XSL}}}call-template", name=name)
            for param in params:
                etree.SubElement(call, f"{{{_XSL}}}with-param", name=param, select=f"${param}")
            call.tail = use.tail
            use.getparent().replace(use, call)


_DEFAULTS = {("text()", "-1"), ("@*|node()", "-2")}     # the skeleton's own templates in a pattern's mode


def _select(run, templates: list, selector: _Selector) -> bool:
    """Apply the pattern's mode to the nodes its rules can match instead of walking the document (see above);
    False when the pattern keeps its walk."""
    mode = run.get("mode")
    rules = [t for t in templates if (t.get("match"), t.get("priority")) not in _DEFAULTS]
    if len(templates) - len(rules) != 2:
        return False
    recursions = []
    for rule in rules:
        last = rule[-1] if len(rule) else None
        if (last is None or last.tag != f"{{{_XSL}}}apply-templates" or last.get("select") != "*"
                or last.get("mode") != mode or len(last) or not rule.get("priority")):
            return False
        recursions.append(last)
    selected = selector.select([r.get("match") for r in rules])
    if selected is None:
        return False
    for rule, last in zip(rules, recursions):
        rule.remove(last)
    run.set("select", selected)
    return True


def cache_key(folder: Path, optimised: bool = True) -> str:
    """SHA-256 of what a generated validator depends on: every file of the rules folder (name and content), this
    module (the optimiser), the skeleton's files and the engine's version."""
    import saxonche

    h = hashlib.sha256(f"{saxonche.__name__} {_engine_version()} lxml {etree.LXML_VERSION} {optimised}".encode())
    for base in (Path(__file__), *sorted(SKELETON.glob("*.xsl"))):
        h.update(base.name.encode() + b"\0" + base.read_bytes())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode("utf-8") + b"\0" + path.read_bytes())
    return h.hexdigest()


def _engine_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("saxonche")
    except PackageNotFoundError:
        return "unknown"


def _write_atomic(path: Path, text: str) -> None:
    """Best effort (a cache): written whole or not at all."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass


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
        writer.write(answer(schematrons, line) + "\n")
        writer.flush()


def answer(schematrons: Schematrons, line: bytes | str) -> str:
    """One request line -> its answer line (without the newline), for the pipe and the socket validators."""
    try:
        req = json.loads(line)
        if req.get("ping"):
            return json.dumps({"ready": True})
        only = tuple(req["only"]) if req.get("only") else None
        result = schematrons.check(req["cda"], tuple(req["templates"]), req["code"], only=only)
        out = {"checked": list(result.checked), "failures": [list(astuple(f)) for f in result.failures]}
    except Exception as exc:                   # one document SaxonC cannot run on: say so, keep serving
        out = {"failed": f"{type(exc).__name__}: {_line(str(exc))}"}
    return json.dumps(out, ensure_ascii=True)


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
