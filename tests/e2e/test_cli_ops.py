"""The `hub` command next to a running service: root never changes the data directory's owners, a one-off command
stops the embedded PostgreSQL it started (and leaves a running one alone), `--config` after the subcommand, and an
example in every command's --help."""

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from hub.db import Embedded
from tests.e2e.serve_support import PASSWORD, ROOT, as_user, clean_env, run_hub, shared_tmp, write_config
from tests.support import free_port

OWNER = "hubowner"


def _owners(path: Path) -> set[tuple[str, int]]:
    found = set()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [dirpath, *(os.path.join(dirpath, f) for f in dirnames + filenames)]:
            st = os.lstat(name)
            found.add((pwd.getpwuid(st.st_uid).pw_name, stat.S_IMODE(st.st_mode) if name == str(path) else 0))
    return {o for o, _ in found}


@pytest.fixture
def owned_data_dir(pki):
    """A data directory owned by another user (the `hub` user of deploy/README.md), as in production."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    try:
        pwd.getpwnam(OWNER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OWNER],
                       check=True, capture_output=True)
    user = pwd.getpwnam(OWNER)
    base = Path(tempfile.mkdtemp(prefix="hub-owned-"))
    base.chmod(0o755)
    data = base / "var"
    data.mkdir(mode=0o750)
    os.chown(data, user.pw_uid, user.pw_gid)
    config = write_config(base / "hub.toml", pki, data_dir=data, smtp_port=free_port(), http_port=free_port(),
                          transport={})
    config.chmod(0o644)
    try:
        with as_user(OWNER) as prefix:       # the interpreter stays reachable once the command became OWNER
            yield config, data, user, prefix
    finally:
        Embedded(data).stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


def test_root_commands_become_the_data_directory_owner(owned_data_dir):
    config, data, user, prefix = owned_data_dir
    done = run_hub(config, "accounts", "add", "ch-test", "--password-stdin", "--allow-from", "ch-test.example",
                   input=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    assert _owners(data) == {OWNER}                        # nothing chowned to root or hubpg
    assert stat.S_IMODE(data.stat().st_mode) == 0o750 and data.stat().st_uid == user.pw_uid
    assert not Embedded(data).is_running()                 # the command stopped the server it started
    # now a "running hub": its PostgreSQL started by the owner; root's daily job uses it and leaves it running
    subprocess.run([*prefix, sys.executable, "-c", f"from hub.db import Embedded; Embedded(__import__('pathlib')"
                    f".Path({str(data)!r})).start()"], check=True, cwd=ROOT, env=clean_env(), timeout=120)
    pid = (data / "pg" / "postmaster.pid").read_text().split()[0]
    listing = data.parent / "liste.xml"
    from tests.support import trust_list_xml

    listing.write_bytes(trust_list_xml([("medecin.mssante.fr", "CN=x")]))
    listing.chmod(0o644)
    done = run_hub(config, "trust", "import", str(listing), "--force")
    assert done.returncode == 0, done.stderr
    assert Embedded(data).is_running() and (data / "pg" / "postmaster.pid").read_text().split()[0] == pid
    assert _owners(data) == {OWNER}


def test_one_off_command_stops_the_server_it_started(pki):
    with shared_tmp("hub-oneoff-") as tmp_path:
        _one_off(tmp_path, pki)


def _one_off(tmp_path, pki):
    config = write_config(tmp_path / "hub.toml", pki, data_dir=tmp_path / "var", smtp_port=free_port(),
                          http_port=free_port(), transport={})
    done = run_hub(config, "accounts", "list")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "var" / "pg" / "PG_VERSION").exists() and not Embedded(tmp_path / "var").is_running()


def test_every_command_has_an_example_and_described_arguments():
    import argparse

    from hub import clihelp
    from hub.cli import build_parser

    commands = clihelp.commands(build_parser())
    assert len(commands) > 40
    for path, parser in commands:
        assert parser.epilog and "hub " + path in parser.epilog, path
        for action in parser._actions:
            if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
                assert action.help, (path, action.dest)
        assert any("--config" in a.option_strings for a in parser._actions), path
