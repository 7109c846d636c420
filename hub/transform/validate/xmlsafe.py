"""Safe parsing of untrusted XML and CDA schema validation.

Trusts nothing in its input: every document (CDA from a mail, from an HL7 v2 OBX, from an XDM zip) goes through
`parse_xml`, which refuses any DOCTYPE (so no external entity, no entity expansion / billion laughs), never loads a
DTD, never touches the network, keeps libxml2's huge-tree limits, caps the size in bytes and the element depth.
Every failure is a `hub.errors.ParseError` naming the line and column.

`CdaValidator` compiles `CDA_extended.xsd` once (setting `transform.cda_schema`, passed in by the caller) and answers
"valid" or "invalid: <first error>" (the values the error quotes are redacted). An empty schema path means
"not_validated".
"""

from __future__ import annotations

import re

from lxml import etree

from hub.errors import ConfigError, ParseError

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_DOCTYPE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                           huge_tree=False, remove_blank_text=False, collect_ids=False)


class SafeXml:
    """Parser settings for untrusted XML: size cap, depth cap. Cheap to build; holds no mutable state."""

    def __init__(self, max_depth: int = 256, max_bytes: int = DEFAULT_MAX_BYTES):
        if max_depth < 2:
            raise ConfigError("transform.max_xml_depth must be at least 2")
        self.max_depth = max_depth
        self.max_bytes = max_bytes
        self._too_deep = etree.XPath("boolean(" + "/*" * (max_depth + 1) + ")")

    def parse(self, data: bytes, what: str = "XML") -> etree._Element:
        """Parse `data` into an element tree root, or raise ParseError."""
        if not isinstance(data, (bytes, bytearray)):
            raise ParseError(f"{what}: expected bytes")
        if len(data) > self.max_bytes:
            raise ParseError(f"{what}: {len(data)} bytes exceeds the {self.max_bytes}-byte limit")
        if not data.strip():
            raise ParseError(f"{what}: empty document", where="line 1")
        _refuse_doctype(data, what)
        try:
            root = etree.fromstring(bytes(data), _parser())
        except etree.XMLSyntaxError as exc:
            line, col = exc.position if exc.position else (0, 0)
            raise ParseError(f"{what}: {exc.msg}", where=f"line {line}, column {col}") from None
        except (ValueError, etree.LxmlError) as exc:
            raise ParseError(f"{what}: {exc}") from None
        tree = root.getroottree()
        if tree.docinfo.doctype:
            raise ParseError(f"{what}: DOCTYPE declarations are refused", where="line 1")
        if self._too_deep(tree):
            raise ParseError(f"{what}: element nesting deeper than {self.max_depth}")
        return root


def _refuse_doctype(data: bytes, what: str) -> None:
    head = bytes(data)
    if head[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in head[:4]:
        # UTF-16/32: look for the declaration in the decoded text
        for enc in ("utf-16", "utf-32"):
            try:
                head = head.decode(enc).encode("utf-8", "replace")
                break
            except UnicodeDecodeError:
                continue
    match = _DOCTYPE.search(head)
    if match:
        line = head.count(b"\n", 0, match.start()) + 1
        raise ParseError(f"{what}: DOCTYPE/ENTITY declarations are refused", where=f"line {line}")


class CdaValidator:
    """The compiled CDA schema. Build once (at registry build time) and reuse: compiling costs ~50 ms."""

    def __init__(self, schema_path: str):
        self.schema_path = schema_path
        self._schema: etree.XMLSchema | None = None
        if schema_path:
            try:
                self._schema = etree.XMLSchema(etree.parse(schema_path, _schema_parser()))
            except (OSError, etree.LxmlError) as exc:
                raise ConfigError(f"transform.cda_schema: cannot load {schema_path}: {exc}") from None

    @property
    def enabled(self) -> bool:
        return self._schema is not None

    def validate(self, root: etree._Element) -> str:
        """'valid', 'invalid: <first error>' or 'not_validated' (no schema configured)."""
        if self._schema is None:
            return "not_validated"
        if self._schema.validate(root):
            return "valid"
        err = self._schema.error_log[0] if len(self._schema.error_log) else None
        return f"invalid: line {err.line}: {redact(err.message)}" if err is not None else "invalid: unknown error"


_QUOTED = re.compile(r"'([^']*)'")
_NAME = re.compile(r"^(\{[^}]*\})?[A-Za-z_][\w.-]*$")


def redact(message: str) -> str:
    """A schema error names elements, attributes and types, and may quote the value that failed (a birth date, a
    name): the value is replaced by '…' (what a step records never carries a document's values)."""
    def one(m: re.Match) -> str:
        before, after = message[max(0, m.start() - 6):m.start()], message[m.end():m.end() + 7]
        value = before.lower().endswith("value ") or after.startswith(" is not") or before.endswith(": ")
        return m.group(0) if _NAME.match(m.group(1)) and not value else "'…'"
    return _QUOTED.sub(one, message)


def _schema_parser() -> etree.XMLParser:
    # the schema is trusted configuration; its includes are local files, never network
    return etree.XMLParser(no_network=True, resolve_entities=False)
