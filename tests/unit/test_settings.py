"""Settings: every key documented in the example file, environment overrides, errors naming the key."""

import dataclasses
import tomllib
from pathlib import Path

import pytest

from hub import settings as S
from hub.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "hub.example.toml"


def test_example_file_documents_every_key_with_its_default():
    raw = tomllib.loads(EXAMPLE.read_text())
    defaults = S.Settings()
    for f in dataclasses.fields(S.Settings):
        if f.name == "source":
            continue
        section = getattr(defaults, f.name)
        for key in (k.name for k in dataclasses.fields(section)):
            assert key in raw[f.name], f"{f.name}.{key} missing from {EXAMPLE.name}"
            assert raw[f.name][key] == getattr(section, key), f"{f.name}.{key}: example differs from default"


def test_environment_overrides_the_file(tmp_path):
    cfg = tmp_path / "hub.toml"
    cfg.write_text('[smtp]\nlisten = "127.0.0.1:25"\n[delivery.transport]\n"a.fr" = "127.0.0.1:26"\n')
    s = S.load(cfg, env={"HUB_SMTP_LISTEN": "0.0.0.0:2525", "HUB_DATA_DIR": "/srv/hub", "HUB_DOMAINS": "a.fr,b.fr",
                         "HUB_DELIVERY_TLS_POLICY": "archive.local=none"})
    assert s.smtp.listen == "0.0.0.0:2525" and s.hub.data_dir == "/srv/hub" and s.hub.domains == ["a.fr", "b.fr"]
    assert s.delivery.transport == {"a.fr": "127.0.0.1:26"} and s.delivery.tls_policy == {"archive.local": "none"}
    assert s.resolution_domain == "rpps.a.fr"


@pytest.mark.parametrize("text, key", [
    ("[smtp]\nmax_message_size = 'big'\n", "smtp.max_message_size"),
    ("[delivery.tls_policy]\n'x.fr' = 'maybe'\n", "delivery.tls_policy.x.fr"),
    ("[directory]\nunresolved = 'drop'\n", "directory.unresolved"),
    ("[nonsense]\n", "nonsense"),
    ("[smtp\n", "hub.toml"),
])
def test_errors_name_the_key(tmp_path, text, key):
    cfg = tmp_path / "hub.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        S.load(cfg, env={})
    assert key in str(err.value)
