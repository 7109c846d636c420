-- The processing stage: per-recipient plans decided by the routing rules at DATA time, and the message variants
-- (transformed bodies, header edits) the recipients are delivered from.
CREATE TABLE message_variant (
    id            bigserial PRIMARY KEY,
    message_id    text NOT NULL REFERENCES message(id) ON DELETE CASCADE,
    plan          text NOT NULL,              -- what was applied: chain name, header edits (no patient data)
    body          bytea,
    created_at    timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE message_variant ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE INDEX message_variant_message ON message_variant (message_id);

ALTER TABLE recipient ADD COLUMN variant_id bigint REFERENCES message_variant(id);
ALTER TABLE recipient ADD COLUMN plan jsonb;       -- for state 'pending': {"transform":..., "headers":..., ...}
ALTER TABLE recipient ADD COLUMN rule_id text;
ALTER TABLE recipient ADD COLUMN priority integer NOT NULL DEFAULT 0;   -- routing rule `priority`: higher first
DROP INDEX recipient_due;
CREATE INDEX recipient_due ON recipient (priority DESC, next_attempt_at) WHERE state = 'queued';
