"""Running `hub` as root next to a hub that runs as its own user.

Every `hub` command started as root first looks at the owner of the data directory (hub.data_dir). When it is a
user other than root (e.g. `hub`, as in deploy/README.md), the command becomes that user (its groups, then its gid,
then its uid) before it touches anything: the embedded PostgreSQL, the audit key, the lock. Nothing is ever
chowned or chmodded under a running hub's feet. When the data directory is root's (a hub run as root, the embedded
PostgreSQL then running as the system user `hubpg`), or does not exist yet, the command stays root.
"""

from __future__ import annotations

import os
import pwd

from hub.errors import ConfigError


def drop_to_data_dir_owner(settings) -> str | None:
    """Become the data directory's owner when running as root and it belongs to another user; return that user's
    name (None when nothing changed)."""
    if os.geteuid() != 0:
        return None
    data = settings.data_dir
    try:
        st = data.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"setting hub.data_dir: {data}: {exc.strerror}") from None
    if st.st_uid == 0:
        return None
    from hub.db import PG_SYSTEM_USER

    try:
        entry = pwd.getpwuid(st.st_uid)
    except KeyError:
        entry = None
    if entry is not None and entry.pw_name == PG_SYSTEM_USER:
        return None                        # a root-run hub's layout: the server runs as hubpg, the hub as root
    gid = entry.pw_gid if entry is not None else st.st_gid
    metrics = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if metrics and os.path.isdir(metrics) and os.path.basename(metrics).startswith("hub-metrics-"):
        os.chown(metrics, st.st_uid, gid)  # our own temporary directory, made a moment ago as root
    if entry is not None:
        os.initgroups(entry.pw_name, gid)
        os.environ["HOME"] = entry.pw_dir
    else:
        os.setgroups([])
    os.setgid(gid)
    os.setuid(st.st_uid)
    return entry.pw_name if entry is not None else str(st.st_uid)
