-- Routing rule sets (hub.rules). Each activated set is stored whole: its files as JSON {name: text}.
-- The current version is the highest one; versions only grow (a rollback stores the old content as a new version).
CREATE TABLE rule_set (
    version       integer PRIMARY KEY CHECK (version > 0),
    content_hash  text NOT NULL,                 -- SHA-256 of the files in canonical JSON (hub.rules.loader)
    files         jsonb NOT NULL,                -- {"10-labo.yaml": "rules: ...", ...}
    activated_at  timestamptz NOT NULL DEFAULT now(),
    activated_by  text NOT NULL,                 -- operator, "sighup", "watch", "startup", ...
    reason        text NOT NULL DEFAULT 'reload' CHECK (reason IN ('reload', 'rollback', 'startup', 'watch')),
    rollback_of   integer REFERENCES rule_set(version)  -- the version whose content was re-activated
);
CREATE INDEX rule_set_hash ON rule_set (content_hash);
