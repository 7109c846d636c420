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


@pytest.mark.parametrize("text, message", [
    ("[hub]\nprocesses = -1\n", "setting hub.processes: expected at least 0, got -1"),
    ("[delivery]\nworkers = 0\n", "setting delivery.workers: expected at least 1, got 0"),
    ("[delivery]\npoll_interval = 0\n", "setting delivery.poll_interval: expected a number of seconds above 0"),
    ("[smtp]\nsession_timeout = nan\n", "setting smtp.session_timeout: expected a finite number"),
    ("[database]\ncommand_timeout = -5.0\n", "setting database.command_timeout: expected a number of seconds above 0"),
    ("[directory]\nmax_shrink_ratio = 1.5\n", "setting directory.max_shrink_ratio: expected 0 to 1, got 1.5"),
    ("[audit]\npage_size = 20000\n", "setting audit.page_size: expected 1 to 10000, got 20000"),
    ("[database]\npool_min = 20\npool_max = 5\n", "database.pool_min (20) and database.pool_max (5)"),
    ("[hub]\ndomains = ['hub qa.example']\n", "setting hub.domains: 'hub qa.example' is not a domain name"),
    ("[smtp]\nhostname = 'hub_example.org'\n", "setting smtp.hostname: 'hub_example.org' is not a domain name"),
    ("[delivery]\nlocal_domains = ['archive.local.']\n", "setting delivery.local_domains: 'archive.local.'"),
])
def test_values_out_of_range_are_refused_with_the_key(tmp_path, text, message):
    """An operator's typo in a value (a negative count, a zero timeout, a NaN, a domain with a space) stops the
    hub with the key named, instead of a hub that serves nothing, spins or never times out."""
    cfg = tmp_path / "hub.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        S.load(cfg, env={})
    assert message in str(err.value)


def test_values_at_their_limits_are_accepted(tmp_path):
    cfg = tmp_path / "hub.toml"
    cfg.write_text("[hub]\nprocesses = 0\n[smtp]\nmax_connections = 0\n[queue]\ndelay_warning = 0\n"
                   "[trust]\nmax_removed_ratio = 0.0\n[audit]\nbody_retention_days = 0\npage_size = 10000\n")
    s = S.load(cfg, env={})
    assert s.hub.processes == 0 and s.smtp.max_connections == 0 and s.audit.page_size == 10000


@pytest.mark.parametrize("var, message", [
    ("HUB_DATABASE_URl", "environment variable HUB_DATABASE_URl: no such setting in [database] "
                         "(did you mean HUB_DATABASE_URL?)"),
    ("HUB_SMTP_LISTN", "environment variable HUB_SMTP_LISTN: no such setting in [smtp]"),
    ("hub_delivery_ca_file", "(did you mean HUB_DELIVERY_CA_FILE?)"),
])
def test_a_misspelt_environment_variable_is_refused(var, message):
    """hub.env holds the database URL: a typo there must not start a hub on an empty embedded database."""
    with pytest.raises(ConfigError) as err:
        S.load(None, env={var: "x"})
    assert message in str(err.value)


def test_other_programs_hub_variables_are_left_alone():
    s = S.load(None, env={"HUB_PROTOCOL": "https", "HUB_VERBOSE": "1", "HUB_DATABASE_ADMIN_URL": "postgresql://a@b/c",
                          "HUB_TEST_DATABASE_URL": "x", "HUB_SHARED": "/s", "HUB_DATABASE_URL": "postgresql://h@db/hub"})
    assert s.database.url == "postgresql://h@db/hub"


def test_a_configuration_file_that_is_not_utf8_is_refused_at_its_line_and_a_bom_is_read(tmp_path):
    from hub.transform.senders import SenderProfiles

    cfg = tmp_path / "hub.toml"
    cfg.write_bytes("[hub]\ndomains = ['hub.example.org']\n[smtp]\nhostname = 'hub.example.org' # hôte\n"
                    .encode("cp1252"))
    with pytest.raises(ConfigError) as err:
        S.load(cfg, env={})
    assert str(err.value) == f"{cfg}: line 4: not UTF-8 text (a TOML file is UTF-8)"
    with pytest.raises(ConfigError) as err:
        SenderProfiles.from_file(str(cfg))
    assert str(err.value) == f"{cfg}: line 4: not UTF-8 text (a TOML file is UTF-8)"
    cfg.write_bytes(b"\xef\xbb\xbf[smtp]\nhostname = 'hub.example.org'\n")      # Notepad's UTF-8
    assert S.load(cfg, env={}).smtp.hostname == "hub.example.org"
