-- Audit events (minimal form; hub.audit owns this schema).
CREATE TABLE audit_event (
    id            bigserial PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    message_id    text,
    event         text NOT NULL,
    account       text,
    sender        text,
    recipient     text,
    patient_key   bytea,
    doc_type      text,
    rule_version  integer,
    facts         jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_event_message ON audit_event (message_id, id);
