"""The patient's INS, kept only as a keyed hash so that the audit trail can be searched by patient without holding
identities in clear.

`patient_key(ins, key)` = HMAC-SHA256(key, normalised INS). Normalisation: take the identifier of an HL7 CX value
(`<id>^^^&1.2.250.1.213.1.4.8&ISO^INS`), drop any OID, spaces and punctuation, write Corsican departments 2A/2B as
19/18 (as for the NIR key), keep the 13 significant digits of a 15-digit INS (the last two are its check key).
So "2 77 07 63 220 829 10", "277076322082910^^^&1.2.250.1.213.1.4.8&ISO^INS" and "2770763220829" give one key.

The key file (setting audit.patient_key_file, default <data_dir>/audit.key) holds 32 random bytes in hex; it is
created 0600 on first use and must be kept (and backed up) for as long as the audit trail: without it, past
events cannot be found by patient. It must never be in a repository.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from hub.errors import ConfigError, InputError
from hub.settings import Settings

_OID = re.compile(r"(?:urn:oid:)?\d+(?:\.\d+){3,}")


def normalise_ins(ins: str) -> str:
    """The significant digits of an INS (see the module docstring). InputError if there are none."""
    value = ins.strip().split("^", 1)[0]
    value = _OID.sub(" ", value)
    compact = re.sub(r"[^0-9A-Za-z]", "", value).upper()
    if len(compact) in (13, 15) and compact[5:7] in ("2A", "2B"):
        compact = compact[:5] + ("19" if compact[6] == "A" else "18") + compact[7:]
    digits = re.sub(r"\D", "", compact)
    if len(digits) == 15:
        digits = digits[:13]
    if not digits:
        raise InputError(f"not an INS: {ins!r}")
    return digits


def patient_key(ins: str, key: bytes) -> bytes:
    """The keyed hash under which a patient is recorded and searched."""
    return hmac.new(key, normalise_ins(ins).encode("ascii"), hashlib.sha256).digest()


def key_path(settings: Settings) -> Path:
    return Path(settings.audit.patient_key_file or settings.data_dir / "audit.key")


def load_patient_key(settings: Settings) -> bytes:
    """Read the key, creating it (0600) if missing. ConfigError if it is unreadable, malformed or readable by
    others."""
    path = key_path(settings)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass                      # another process created it first
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"setting audit.patient_key_file: cannot read {path}: {exc}") from None
    if mode & 0o077:
        raise ConfigError(f"setting audit.patient_key_file: {path} is readable by others (chmod 600 it)")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"setting audit.patient_key_file: {path} must hold hex digits") from None
    if len(key) < 32:
        raise ConfigError(f"setting audit.patient_key_file: {path} must hold at least 32 bytes (64 hex digits)")
    return key
