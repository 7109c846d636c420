-- Operator queue tools (hub.queue.ops): holds by an operator, deleted messages, and a small index for the queue
-- sampling of /metrics and `hub queue list|summary` (recipients waiting or dead, never the delivered millions).

ALTER TABLE message DROP CONSTRAINT message_state_check;
ALTER TABLE message ADD CONSTRAINT message_state_check
    CHECK (state IN ('processing', 'queued', 'held', 'done', 'dead', 'deleted'));
ALTER TABLE recipient DROP CONSTRAINT recipient_state_check;
ALTER TABLE recipient ADD CONSTRAINT recipient_state_check
    CHECK (state IN ('pending', 'queued', 'delivered', 'bounced', 'held', 'dead', 'deleted'));

ALTER TABLE recipient ADD COLUMN hold_reason text;     -- set by `hub queue hold`: who, when, why
ALTER TABLE message ADD COLUMN deleted_reason text;     -- set by `hub queue delete`

CREATE INDEX recipient_waiting ON recipient (state, message_id) WHERE state IN ('pending', 'queued', 'held', 'dead');
