"""Routing rules the regional operator edits: ordered data, a small pure engine.

    yamlnodes.py   rule files read as YAML nodes (every value keeps file:line:column), errors collected
    matchers.py    `match:` keys compiled to pure functions of Facts
    actions.py     `then:` keys compiled to typed, immutable Actions
    loader.py      a directory -> validated RuleSet, or RulesInvalid listing every error
    engine.py      Facts, Decision, RuleSet.evaluate / evaluate_rcpt (first match wins)
    store.py       versions in PostgreSQL (table rule_set), audit event rules_activated, NOTIFY hub_rules
    service.py     RulesService: the current set of a process, reload, watch, rollback
    explain.py     explain one message, replay recent decisions against candidate files
    cli.py         `hub rules ...`

The format is documented, with a worked example for every matcher and action, in routing_rules/README.md.
"""

from hub.rules.actions import Actions, Fallback, HeaderEdits, Reject, Transform
from hub.rules.engine import Decision, Facts, Rule, RuleSet, data_reply
from hub.rules.loader import RulesInvalid, compile_files, read_dir, transform_names
from hub.rules.service import ReloadResult, RulesService
from hub.rules.yamlnodes import RuleError

__all__ = ["Actions", "Decision", "Facts", "Fallback", "HeaderEdits", "Reject", "ReloadResult", "Rule", "RuleError",
           "RuleSet", "RulesInvalid", "RulesService", "Transform", "compile_files", "data_reply", "read_dir",
           "transform_names"]
