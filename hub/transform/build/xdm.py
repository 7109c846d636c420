"""IHE XDM packaging (`IHE_XDM.ZIP`, FORMATS.md §5, MSSANTE.md §3.2): writer and safe reader.

Writer: README.TXT, INDEX.HTM, IHE_XDM/SUBSET01/METADATA.XML (ebRIM 3.0 SubmissionSet + DocumentEntry per CDA +
HasMember associations; slots, classifications and external identifiers with the §5.2 UUIDs) and the CDAs as
DOC0001.XML, DOC0002.XML... Ids are derived from a caller-supplied seed so the same input gives the same package.
Large entries (>= 64 KiB, mostly base64 PDF that deflate barely shrinks) are stored, small ones deflated. The archive
is assembled in one join (`zip_archive`: the bytes `zipfile` would write, without its per-entry buffering).

Reader: untrusted bytes. Caps the entry count and the expanded size (settings `transform.max_zip_entries`,
`transform.max_zip_expanded`, passed in), refuses encrypted entries, absolute or `..` paths, duplicate names and
compression ratios typical of zip bombs; parses METADATA.XML with `SafeXml`; checks each document's SHA-1 and size.
Every refusal is a ParseError naming the entry.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from isal import isal_zlib

from hub.errors import ParseError
from hub.transform.build.cda import x
from hub.transform.parse.cda_info import CdaInfo
from hub.transform.model import Party
from hub.transform.validate.xmlsafe import SafeXml

UUID_DOC_ENTRY = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
UUID_SUBMISSION_SET = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
DE_AUTHOR, DE_CLASS, DE_CONF = ("urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d",
                                "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a",
                                "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f")
DE_FORMAT, DE_FACILITY, DE_PRACTICE, DE_TYPE = ("urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d",
                                                "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1",
                                                "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead",
                                                "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983")
DE_PATIENT, DE_UNIQUE = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427", "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
SS_AUTHOR, SS_CONTENT = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d", "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
SS_PATIENT, SS_SOURCE, SS_UNIQUE = ("urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446",
                                    "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832",
                                    "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8")
HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
STORE_FROM = 64 * 1024
STORE_BELOW = 1024       # README.TXT, INDEX.HTM: deflate would save ~60 bytes each for the cost of a deflate state
DEFLATE_LEVEL = 1        # ISA-L's (isal_zlib: levels 0-3): a third of the CPU of zlib's level 3, entries 3 % larger
_STAMP = ((0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14))
_LOCAL = struct.Struct(zipfile.structFileHeader)        # the zip record layouts, as zipfile writes them
_CENTRAL = struct.Struct(zipfile.structCentralDir)
_END = struct.Struct(zipfile.structEndArchive)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*/?$")


@dataclass(frozen=True)
class XdmDocument:
    path: str
    data: bytes
    entry_uuid: str
    unique_id: str
    type_code: str
    patient_id: str
    mime_type: str


@dataclass(frozen=True)
class XdmContent:
    names: tuple[str, ...]
    metadata: bytes
    documents: tuple[XdmDocument, ...]


def _slot(name: str, *values: str) -> str:
    vals = "".join(f"<rim:Value>{x(v)}</rim:Value>" for v in values if v)
    return f'<rim:Slot name="{name}"><rim:ValueList>{vals}</rim:ValueList></rim:Slot>' if vals else ""


def _classif(ident: str, scheme: str, obj: str, node: str, coding: str, label: str, slots: str = "") -> str:
    return (f'<rim:Classification id="{ident}" classificationScheme="{scheme}" classifiedObject="{obj}" '
            f'nodeRepresentation="{x(node)}">' + slots + (_slot("codingScheme", coding) if coding else "")
            + f'<rim:Name><rim:LocalizedString value="{x(label or node)}"/></rim:Name></rim:Classification>')


def _ext(ident: str, scheme: str, obj: str, value: str, label: str) -> str:
    return (f'<rim:ExternalIdentifier id="{ident}" identificationScheme="{scheme}" registryObject="{obj}" '
            f'value="{x(value)}"><rim:Name><rim:LocalizedString value="{label}"/></rim:Name></rim:ExternalIdentifier>')


def patient_cx(info: CdaInfo, local_root: str) -> str:
    p = info.patient
    if p.ins and p.ins_oid:
        return f"{p.ins}^^^&{p.ins_oid}&ISO^NH"
    return f"{p.local_id}^^^&{local_root}&ISO^PI"


def _xcn(party: Party) -> str:
    return (f"8{party.rpps}^{party.family}^{party.given}^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS"
            if party.rpps else f"^{party.family}^{party.given}")


def _utc(ts: str) -> str:
    """CDA time (with zone) -> XDS UTC 'YYYYMMDDHHMMSS' (a bare date stays a date)."""
    if len(ts) > 8 and ts[-5] in "+-":
        digits = ts[:-5].ljust(14, "0")[:14]
        when = _fast_time(digits, ts[-5:]) or datetime.strptime(digits + ts[-5:], "%Y%m%d%H%M%S%z")
        return when.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S")
    return ts[:14]


def _fast_time(digits: str, zone: str) -> datetime | None:
    """strptime(digits + zone, "%Y%m%d%H%M%S%z") for plain values, else None (strptime decides)."""
    if not (digits.isascii() and digits.isdigit() and zone[1:].isascii() and zone[1:].isdigit()
            and int(zone[3:]) < 60):
        return None
    offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[3:]))
    try:
        return datetime(int(digits[:4]), int(digits[4:6]), int(digits[6:8]), int(digits[8:10]), int(digits[10:12]),
                        int(digits[12:14]), tzinfo=timezone(-offset if zone[0] == "-" else offset))
    except ValueError:
        return None


def metadata_xml(docs: list[tuple[CdaInfo, str, bytes]], *, uuids: list[str], ss_unique: str, source_oid: str,
                 submission_time: str, local_root: str) -> bytes:
    """docs: (info, file name, CDA bytes). uuids: SS first, then enough for every object."""
    ids = iter(uuids)
    ss = next(ids)
    first = docs[0][0]
    out = []
    for info, name, data in docs:
        de = next(ids)
        p, a = info.patient, info.author
        cx = patient_cx(info, local_root)
        pid_info = [f"PID-3|{cx}", f"PID-5|{p.family}^{p.given}^^^^^L", f"PID-7|{p.birth_date}", f"PID-8|{p.sex}"]
        author_slots = (_slot("authorPerson", _xcn(a))
                        + _slot("authorInstitution", f"{a.org_name}^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^1{a.org_finess}"
                                if a.org_finess else a.org_name)
                        + _slot("authorSpecialty", "^".join(info.author_specialty) if info.author_specialty[0] else ""))
        fmt, fmt_system = info.format_code
        out.append(
            f'<rim:ExtrinsicObject id="{de}" mimeType="text/xml" objectType="{UUID_DOC_ENTRY}" status="{APPROVED}">'
            + _slot("creationTime", _utc(info.effective_time)) + _slot("languageCode", "fr-FR")
            + _slot("serviceStartTime", _utc(info.service_start)) + _slot("serviceStopTime", _utc(info.service_stop))
            + _slot("sourcePatientId", cx) + _slot("sourcePatientInfo", *pid_info)
            + (_slot("legalAuthenticator", _xcn(info.legal)) if info.legal.rpps else "")
            + _slot("hash", hashlib.sha1(data).hexdigest()) + _slot("size", str(len(data))) + _slot("URI", name)
            + f'<rim:Name><rim:LocalizedString value="{x(info.title)}"/></rim:Name>'
            + _classif(next(ids), DE_AUTHOR, de, "", "", "author", author_slots).replace(
                '<rim:Name><rim:LocalizedString value="author"/></rim:Name>', "")
            + _classif(next(ids), DE_CLASS, de, "10", "1.2.250.1.213.1.1.4.1", "Compte rendu")
            + _classif(next(ids), DE_CONF, de, info.confidentiality, "2.16.840.1.113883.5.25", info.confidentiality)
            + _classif(next(ids), DE_FORMAT, de, fmt, fmt_system, fmt)
            + _classif(next(ids), DE_FACILITY, de, info.facility_code or "SA01", "1.2.250.1.71.4.2.4", "")
            + _classif(next(ids), DE_PRACTICE, de, info.practice_setting or "ETABLISSEMENT", "1.2.250.1.213.1.1.4.9",
                       "")
            + _classif(next(ids), DE_TYPE, de, info.code, "2.16.840.1.113883.6.1", info.code_label)
            + _ext(next(ids), DE_PATIENT, de, cx, "XDSDocumentEntry.patientId")
            + _ext(next(ids), DE_UNIQUE, de, info.unique_id, "XDSDocumentEntry.uniqueId")
            + "</rim:ExtrinsicObject>")
        out.append(f'<rim:Association id="{next(ids)}" associationType="{HAS_MEMBER}" sourceObject="{ss}" '
                   f'targetObject="{de}">' + _slot("SubmissionSetStatus", "Original") + "</rim:Association>")
    a = first.author
    ss_xml = (
        f'<rim:RegistryPackage id="{ss}" objectType="urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject">'
        + _slot("submissionTime", submission_time)
        + f'<rim:Name><rim:LocalizedString value="{x(first.title)}"/></rim:Name>'
        + _classif(next(ids), SS_AUTHOR, ss, "", "", "author", _slot("authorPerson", _xcn(a))
                   + _slot("authorInstitution", a.org_name)).replace(
            '<rim:Name><rim:LocalizedString value="author"/></rim:Name>', "")
        + _classif(next(ids), SS_CONTENT, ss, first.code, "2.16.840.1.113883.6.1", first.code_label)
        + _ext(next(ids), SS_PATIENT, ss, patient_cx(first, local_root), "XDSSubmissionSet.patientId")
        + _ext(next(ids), SS_SOURCE, ss, source_oid, "XDSSubmissionSet.sourceId")
        + _ext(next(ids), SS_UNIQUE, ss, ss_unique, "XDSSubmissionSet.uniqueId")
        + "</rim:RegistryPackage>"
        + f'<rim:Classification id="{next(ids)}" classifiedObject="{ss}" classificationNode="{UUID_SUBMISSION_SET}"/>')
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<lcm:SubmitObjectsRequest '
            'xmlns:lcm="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0" '
            'xmlns:rim="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"><rim:RegistryObjectList>'
            + ss_xml + "".join(out) + "</rim:RegistryObjectList></lcm:SubmitObjectsRequest>").encode("utf-8")


def build_xdm(docs: list[tuple[CdaInfo, bytes]], *, seed: bytes, hub_oid: str, submission_time: str,
              sender: str = "", product: str = "hub") -> bytes:
    """Package CDAs (same patient) into IHE_XDM.ZIP bytes. submission_time: UTC 'YYYYMMDDHHMMSS'."""
    digest = hashlib.sha256(seed).digest()
    count = 8 + len(docs) * 12
    stream = hashlib.shake_256(digest).digest(16 * count)          # one hash for every entry UUID of the package
    uuids = [_uuid4(stream[i:i + 16]) for i in range(0, 16 * count, 16)]
    files = [(info, f"DOC{n:04d}.XML", data) for n, (info, data) in enumerate(docs, 1)]
    ss_unique = f"{hub_oid}.2.{int.from_bytes(digest[:12], 'big')}"
    meta = metadata_xml(files, uuids=uuids, ss_unique=ss_unique, source_oid=hub_oid,
                        submission_time=submission_time, local_root=f"{hub_oid}.3")
    tree = "\r\n".join(["IHE_XDM/", "  SUBSET01/", "    METADATA.XML"] + [f"    {n}" for _, n, _ in files])
    readme = (f"Sender: {sender or 'hub'}\r\nSoftware: {product}\r\nContent: {len(docs)} CDA R2 document(s) "
              f"for one patient, IHE XDM (ITI-32).\r\nOpen INDEX.HTM, or import IHE_XDM/SUBSET01 into your "
              f"patient record software.\r\n\r\n{tree}\r\n").encode("utf-8")
    links = "".join(f'<li><a href="IHE_XDM/SUBSET01/{n}">{x(i.title)}</a></li>' for i, n, _ in files)
    index = ('<?xml version="1.0" encoding="UTF-8"?>\n<html xmlns="http://www.w3.org/1999/xhtml"><head>'
             f"<title>IHE XDM</title></head><body><p>Sender: {x(sender or 'hub')}</p><ul>{links}</ul>"
             '<p><a href="README.TXT">README.TXT</a></p></body></html>').encode("utf-8")
    entries = [("README.TXT", readme), ("INDEX.HTM", index), ("IHE_XDM/SUBSET01/METADATA.XML", meta)]
    entries += [(f"IHE_XDM/SUBSET01/{n}", d) for _, n, d in files]
    return zip_archive(entries, tuple(int(submission_time[i:j]) for i, j in _STAMP))


def _uuid4(digest: bytes) -> str:
    """`urn:uuid:` + str(uuid.UUID(bytes=digest[:16], version=4)), without the UUID object."""
    b = bytearray(digest[:16])
    b[6] = b[6] & 0x0F | 0x40
    b[8] = b[8] & 0x3F | 0x80
    h = b.hex()
    return f"urn:uuid:{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def zip_archive(entries: list[tuple[str, bytes]], stamp: tuple[int, ...]) -> bytes:
    """The archive `zipfile` writes for these entries (ZipInfo(name, stamp), written in order to a BytesIO), built in
    one join: entries of STORE_FROM bytes or more, and those under STORE_BELOW, are stored (copied once, into the
    result); the others deflated (at DEFLATE_LEVEL). No ZIP64: an entry or archive of 4 GiB or more is a struct.error
    (the hub's inputs are far smaller)."""
    if stamp[0] < 1980:
        raise ValueError("ZIP does not support timestamps before 1980")
    dostime = stamp[3] << 11 | stamp[4] << 5 | stamp[5] // 2
    dosdate = (stamp[0] - 1980) << 9 | stamp[1] << 5 | stamp[2]
    out: list[bytes] = []
    central: list[bytes] = []
    offset = 0
    for name, data in entries:
        try:
            raw_name, flags = name.encode("ascii"), 0
        except UnicodeEncodeError:
            raw_name, flags = name.encode("utf-8"), 0x800
        method = zipfile.ZIP_DEFLATED if STORE_BELOW <= len(data) < STORE_FROM else zipfile.ZIP_STORED
        if method == zipfile.ZIP_STORED:
            body = data
        else:
            deflate = isal_zlib.compressobj(DEFLATE_LEVEL, isal_zlib.DEFLATED, -15)
            body = deflate.compress(data) + deflate.flush()
        crc = isal_zlib.crc32(data)             # ISA-L's: a tenth of zlib's time on a 200 KB letter
        out += (_LOCAL.pack(b"PK\x03\x04", 20, 0, flags, method, dostime, dosdate, crc, len(body), len(data),
                            len(raw_name), 0), raw_name, body)
        central += (_CENTRAL.pack(b"PK\x01\x02", 20, 3, 20, 0, flags, method, dostime, dosdate, crc, len(body),
                                  len(data), len(raw_name), 0, 0, 0, 0, 0o600 << 16, offset), raw_name)
        offset += _LOCAL.size + len(raw_name) + len(body)
    directory = b"".join(central)
    end = _END.pack(b"PK\x05\x06", 0, 0, len(entries), len(entries), len(directory), offset, 0)
    return b"".join((*out, directory, end))


# ---------------------------------------------------------------- reader

_RIM = "{urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0}"


def read_xdm(data: bytes, *, max_entries: int, max_expanded: int, xml: SafeXml) -> XdmContent:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, NotImplementedError) as exc:
        raise ParseError(f"XDM: not a readable zip archive: {exc}") from None
    if len(infos) > max_entries:
        raise ParseError(f"XDM: {len(infos)} entries exceed the limit of {max_entries}")
    total = 0
    names: dict[str, zipfile.ZipInfo] = {}
    for zi in infos:
        name = zi.filename
        if not _SAFE_NAME.match(name) or ".." in name.split("/"):
            raise ParseError("XDM: unsafe entry name refused", where=repr(name[:80]))
        if zi.flag_bits & 0x1:
            raise ParseError("XDM: encrypted entry refused", where=name)
        if name.upper() in names:
            raise ParseError("XDM: duplicate entry name", where=name)
        total += zi.file_size
        if total > max_expanded:
            raise ParseError(f"XDM: expanded size exceeds {max_expanded} bytes (zip bomb?)", where=name)
        if zi.file_size > 1_000_000 and zi.file_size > 200 * max(zi.compress_size, 1):
            raise ParseError("XDM: compression ratio above 200:1 refused (zip bomb?)", where=name)
        names[name.upper()] = zi
    meta_name = next((n for n in sorted(names) if re.fullmatch(r"IHE_XDM/[A-Z0-9_]+/METADATA\.XML", n)), None)
    if meta_name is None:
        raise ParseError("XDM: no IHE_XDM/<SUBSET>/METADATA.XML")
    budget = [max_expanded]

    def read(upper: str) -> bytes:
        zi = names[upper]
        try:
            with zf.open(zi) as fh:
                out = fh.read(min(zi.file_size, budget[0]) + 1)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
            raise ParseError(f"XDM: cannot read entry: {exc}", where=zi.filename) from None
        budget[0] -= len(out)
        if len(out) > zi.file_size or budget[0] < 0:
            raise ParseError("XDM: entry larger than declared (zip bomb?)", where=zi.filename)
        return out

    metadata = read(meta_name)
    root = xml.parse(metadata, "METADATA.XML")
    subset = meta_name.rsplit("/", 1)[0]
    docs = []
    for eo in root.iter(f"{_RIM}ExtrinsicObject"):
        slots = {s.get("name"): [v.text or "" for v in s.iter(f"{_RIM}Value")] for s in eo.findall(f"{_RIM}Slot")}
        ext = {e.get("identificationScheme"): e.get("value") or "" for e in eo.findall(f"{_RIM}ExternalIdentifier")}
        type_code = next((c.get("nodeRepresentation") or "" for c in eo.findall(f"{_RIM}Classification")
                          if c.get("classificationScheme") == DE_TYPE), "")
        uri = (slots.get("URI") or [""])[0]
        path = f"{subset}/{uri.upper()}"
        if not uri or path not in names:
            raise ParseError(f"XDM: DocumentEntry URI {uri!r} not in the archive", where=eo.get("id"))
        content = read(path)
        if (slots.get("hash") or [""])[0].lower() != hashlib.sha1(content).hexdigest():
            raise ParseError("XDM: document hash does not match METADATA.XML", where=names[path].filename)
        if (slots.get("size") or [""])[0] != str(len(content)):
            raise ParseError("XDM: document size does not match METADATA.XML", where=names[path].filename)
        docs.append(XdmDocument(names[path].filename, content, eo.get("id") or "", ext.get(DE_UNIQUE, ""), type_code,
                                ext.get(DE_PATIENT, ""), eo.get("mimeType") or ""))
    return XdmContent(tuple(zi.filename for zi in infos), metadata, tuple(docs))
