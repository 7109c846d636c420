"""`hub ... --help`: an example for every command and a sentence for every positional argument, kept in one place
so that `hub <command> --help` always ends with something to copy. Applied by hub.cli.build_parser; a test checks
that every command has an example and every positional argument a description."""

from __future__ import annotations

import argparse

EXAMPLES: dict[str, list[str]] = {
    "serve": ["hub serve --config /etc/hub/hub.toml"],
    "quickstart": ["hub quickstart                       # a local hub and a stand-in operator in ./var/quickstart"],
    "accounts add": ["echo 'a long secret for the DPI' | hub accounts add ch-exemple --password-stdin "
                     "--allow-from ch-exemple.fr",
                     "hub accounts add labo-bio --cert-subject 'CN=sil.labo-bio.fr,O=LABO BIO' --allow-from labo-bio.fr"],
    "accounts list": ["hub accounts list"],
    "accounts disable": ["hub accounts disable ch-exemple"],
    "accounts enable": ["hub accounts enable ch-exemple"],
    "trust import": ["hub trust import /tmp/listeblanchemssante.xml"],
    "trust status": ["hub trust status"],
    "queue list": ["hub queue list", "hub queue list --state deferred --domain medecin.mssante.fr",
                   "hub queue list --state dead | head"],
    "queue summary": ["hub queue summary", "hub queue summary --state deferred"],
    "queue show": ["hub queue show 19ad4c1f2e0b3c9d1a5e8"],
    "queue hold": ["hub queue hold 19ad4c1f2e0b3c9d1a5e8 --reason 'ticket 4521: wrong patient'"],
    "queue release": ["hub queue release 19ad4c1f2e0b3c9d1a5e8"],
    "queue requeue": ["hub queue requeue 19ad4c1f2e0b3c9d1a5e8"],
    "queue delete": ["hub queue delete 19ad4c1f2e0b3c9d1a5e8 --reason 'misaddressed, ticket 4521'"],
    "queue flush": ["hub queue flush", "hub queue flush --domain medecin.mssante.fr"],
    "queue view": ["hub queue view 19ad4c1f2e0b3c9d1a5e8 --headers"],
    "directory import": ["hub directory import /tmp/Extraction_Correspondance_MSSante.zip"],
    "directory status": ["hub directory status --json"],
    "directory lookup": ["hub directory lookup dr.martin@medecin.mssante.fr", "hub directory lookup 'martin lyon'"],
    "directory resolve": ["hub directory resolve 810001234567@rpps.hub.example.org"],
    "directory prefs set": ["hub directory prefs set dr.martin@medecin.mssante.fr --format pdf"],
    "directory prefs clear": ["hub directory prefs clear dr.martin@medecin.mssante.fr"],
    "directory prefs list": ["hub directory prefs list"],
    "rules check": ["hub rules check", "hub rules check /etc/hub/routing_rules.new"],
    "rules history": ["hub rules history --limit 10"],
    "rules diff": ["hub rules diff 3 disk", "hub rules diff 2 3"],
    "rules rollback": ["hub rules rollback 3"],
    "rules reload": ["hub rules reload"],
    "rules explain": ["hub rules explain message.eml --account labo-bio"],
    "rules replay": ["hub rules replay --since 7d /etc/hub/routing_rules.new"],
    "audit search": ["hub audit search --since 2025-12-01 --recipient dr.martin@medecin.mssante.fr",
                     "hub audit search --patient-ins 1234567890123 --format csv"],
    "audit timeline": ["hub audit timeline 19ad4c1f2e0b3c9d1a5e8"],
    "audit verify": ["hub audit verify", "hub audit verify --since 2025-12-01"],
    "audit seal": ["hub audit seal"],
    "audit purge": ["hub audit purge"],
    "tokens add": ["hub tokens add grafana-ops --role operator", "hub tokens add dpo --role auditor"],
    "tokens list": ["hub tokens list"],
    "tokens revoke": ["hub tokens revoke grafana-ops"],
    "transform check": ["hub transform check labo-bioxa-2025-12-01.hpr --account labo-bioxa",
                        "hub transform check lettre.eml --chain pdf_to_cda_n1_xdm --metadata lettre.json"],
    "revocation status": ["hub revocation status"],
    "revocation refresh": ["hub revocation refresh"],
    "db migrate": ["hub db migrate"],
    "db backup": ["hub db backup /var/backups/hub/hub-$(date +%F).dump"],
    "db restore": ["hub db restore /var/backups/hub/hub-2025-12-01.dump"],
}

POSITIONALS: dict[tuple[str, str], str] = {
    ("accounts add", "name"): "the account name (the SMTP login), e.g. ch-exemple",
    ("accounts disable", "name"): "the account name",
    ("accounts enable", "name"): "the account name",
    ("trust import", "file"): "the national list, listeblanchemssante.xml, as downloaded",
    ("directory import", "file"): "Extraction_Correspondance_MSSante or PS_LibreAcces_Personne_activite (.zip or"
                                  " .txt)",
    ("directory lookup", "query"): "an address, @domain, national id, RPPS, FINESS, SIRET or \"name town\"",
    ("directory resolve", "rcpt"): "a recipient address as an establishment would give it in RCPT TO",
    ("directory prefs set", "key"): "a mailbox address or a national id (RPPS / IDNPS)",
    ("directory prefs clear", "key"): "a mailbox address or a national id (RPPS / IDNPS)",
    ("rules diff", "a"): "a version number, or 'disk' for the files in the rules directory",
    ("rules diff", "b"): "a version number, or 'disk'",
    ("rules rollback", "version"): "the version to activate again (see `hub rules history`)",
    ("audit timeline", "message_id"): "the message id (the one in `250 2.0.0 queued as ID`)",
    ("tokens add", "name"): "a name for the token (who or what uses it)",
    ("tokens revoke", "name"): "the token's name",
}


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(path), parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaves(child, (*path, name))
        yield " ".join(path), parser       # the group's own parser (e.g. `hub queue`) gets --config too


def commands(parser: argparse.ArgumentParser):
    """(command path, parser) of every runnable command."""
    return [(path, p) for path, p in _leaves(parser) if path and not any(
        isinstance(a, argparse._SubParsersAction) for a in p._actions)]


def apply(parser: argparse.ArgumentParser) -> None:
    """Examples as each command's epilog, the descriptions of positional arguments, and `--config` accepted after
    the subcommand too (`hub serve --config FILE`; SUPPRESS keeps a value given before the subcommand)."""
    seen: set[int] = set()
    for path, p in _leaves(parser):
        if id(p) in seen or not path:
            continue
        seen.add(id(p))
        if not any("--config" in a.option_strings for a in p._actions):
            p.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE",
                           help="TOML configuration file (default: $HUB_CONFIG); also accepted before the command")
        for action in p._actions:
            if not action.option_strings and not isinstance(action, argparse._SubParsersAction) \
                    and action.help is None:
                action.help = POSITIONALS.get((path, action.dest))
        examples = EXAMPLES.get(path)
        if examples:
            p.formatter_class = argparse.RawDescriptionHelpFormatter
            p.epilog = "example" + ("s" if len(examples) > 1 else "") + ":\n" + \
                "\n".join(f"  {e}" for e in examples)
