-- Relay core: sender accounts, the authorised-domains list, messages and per-recipient deliveries.

CREATE TABLE account (
    id            serial PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    password_hash text,                       -- scrypt, see hub.intake.auth
    cert_subject  text,                       -- RFC 4514 subject DN of the establishment's client certificate
    networks      cidr[] NOT NULL DEFAULT '{}',  -- client networks trusted without login (Postfix mynetworks)
    allow_from    text[] NOT NULL DEFAULT '{}',  -- MAIL FROM addresses or @domains / domains this account may use
    fallback_mailbox text,                    -- where unresolved recipients go when the fallback is "mailbox"
    disabled      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- One row per imported authorised-domains list; exactly one is current.
CREATE TABLE trust_list (
    id            serial PRIMARY KEY,
    imported_at   timestamptz NOT NULL DEFAULT now(),
    generated_at  timestamptz,
    source        text NOT NULL,
    sha256        text NOT NULL,
    entries       integer NOT NULL,
    domains       integer NOT NULL,
    current       boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX trust_list_one_current ON trust_list (current) WHERE current;

CREATE TABLE trust_domain (              -- every <Domaine> entry as published, duplicates included
    list_id       integer NOT NULL REFERENCES trust_list(id) ON DELETE CASCADE,
    position      integer NOT NULL,           -- entry number in the file
    domain        text NOT NULL,              -- lower case, IDNA (ASCII) form
    operator_dn   text NOT NULL DEFAULT '',
    description   text NOT NULL DEFAULT '',
    updated       timestamptz,
    PRIMARY KEY (list_id, position)
);
CREATE INDEX trust_domain_domain ON trust_domain (list_id, domain);

-- A message as accepted. `body` is purged once final and past retention (see hub.audit retention).
CREATE TABLE message (
    id            text PRIMARY KEY,
    account       text,
    mail_from     text NOT NULL,              -- '' for the null sender
    state         text NOT NULL CHECK (state IN ('processing', 'queued', 'held', 'done', 'dead')),
    size          integer NOT NULL,
    body          bytea,
    received_at   timestamptz NOT NULL DEFAULT now(),
    peer          text,
    helo          text,
    tls_version   text,
    envid         text,                       -- DSN ENVID
    ret           text,                       -- DSN RET=FULL|HDRS
    rule_version  integer,
    lease_until   timestamptz,                -- processing stage lease
    recoveries    integer NOT NULL DEFAULT 0, -- times a crashed worker's lease expired on it
    dead_reason   text,
    dead_stage    text,
    finished_at   timestamptz,
    body_purged_at timestamptz
);
ALTER TABLE message ALTER COLUMN body SET STORAGE EXTERNAL;  -- no compression on the hot path
CREATE INDEX message_processing ON message (received_at) WHERE state = 'processing';
CREATE INDEX message_finished ON message (finished_at) WHERE body IS NOT NULL AND finished_at IS NOT NULL;

-- One row per (message, final recipient). The delivery queue.
CREATE TABLE recipient (
    id            bigserial PRIMARY KEY,
    message_id    text NOT NULL REFERENCES message(id) ON DELETE CASCADE,
    rcpt          text NOT NULL,              -- as given in RCPT TO
    address       text NOT NULL,              -- where it goes (after resolution / redirect)
    domain        text NOT NULL,
    state         text NOT NULL CHECK (state IN ('pending', 'queued', 'delivered', 'bounced', 'held', 'dead')),
    attempts      integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until   timestamptz,                -- set when a worker claims the row; expired = claimable again
    lease_owner   text,
    notify        text,                       -- DSN NOTIFY (NEVER | SUCCESS,FAILURE,DELAY), NULL = default
    orcpt         text,
    last_reply    text,
    resolution    text,                       -- how the directory resolved it
    delay_notified boolean NOT NULL DEFAULT false,
    recoveries    integer NOT NULL DEFAULT 0,     -- claims whose lease expired without an outcome (crash)
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX recipient_due ON recipient (next_attempt_at) WHERE state = 'queued';
CREATE INDEX recipient_message ON recipient (message_id);
