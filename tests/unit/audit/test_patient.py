"""INS normalisation, keyed hash and the key file."""

import os

import pytest

from hub.audit.patient import load_patient_key, normalise_ins, patient_key
from hub.errors import ConfigError, InputError
from hub.settings import AuditSection, HubSection, Settings

KEY = b"k" * 32


@pytest.mark.parametrize("given", [
    "277076322082910", "2770763220829", "2 77 07 63 220 829 10", "277076322082910^^^&1.2.250.1.213.1.4.8&ISO^INS",
    "urn:oid:1.2.250.1.213.1.4.8 277076322082910", "277-07-63-220-829",
])
def test_forms_of_one_ins_give_one_key(given):
    assert normalise_ins(given) == "2770763220829"
    assert patient_key(given, KEY) == patient_key("2770763220829", KEY)


def test_corsica_and_distinct_patients():
    assert normalise_ins("1 85 05 2A 123 456 78") == "1850519123456"
    assert normalise_ins("185052B12345678") == "1850518123456"
    assert patient_key("2770763220829", KEY) != patient_key("2770763220828", KEY)
    assert patient_key("2770763220829", KEY) != patient_key("2770763220829", b"x" * 32)


def test_no_digits_is_refused():
    with pytest.raises(InputError):
        normalise_ins("^^^&1.2.250.1.213.1.4.8&ISO")


def test_key_file_created_0600_then_reused(tmp_path):
    settings = Settings(hub=HubSection(data_dir=str(tmp_path / "var")))
    key = load_patient_key(settings)
    path = tmp_path / "var" / "audit.key"
    assert len(key) == 32 and os.stat(path).st_mode & 0o777 == 0o600
    assert load_patient_key(settings) == key


def test_bad_key_files_fail_fast(tmp_path):
    path = tmp_path / "k"
    settings = Settings(audit=AuditSection(patient_key_file=str(path)))
    path.write_text("00" * 32)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_patient_key(settings)
    path.chmod(0o600)
    path.write_text("zz")
    with pytest.raises(ConfigError, match="hex"):
        load_patient_key(settings)
    path.write_text("00" * 8)
    with pytest.raises(ConfigError, match="32 bytes"):
        load_patient_key(settings)
