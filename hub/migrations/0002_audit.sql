-- The audit trail (owned by hub.audit; design and rationale in docs/audit.md).
--
--   audit_event           one row per fact, monthly range partitions on `at` (UTC), inserted unchained
--   audit_message_key     search keys (account, sender, recipient, patient, doc type, rule version) per message,
--                         with the message's received_at for ordering; same monthly partitions; written by the
--                         sealer from the events it seals (intake writes the event row only)
--   audit_seal            the hash chain: blocks written by the single sealer, one block per (round, month)
--   audit_purge           one row per month dropped by retention
--   audit_purge_boundary  head hash of each purged block whose successor was kept (verify links across a purge)
--
-- The runtime role may only SELECT and INSERT on audit_* tables (hub.db._grant_runtime); the triggers below refuse
-- UPDATE, DELETE and TRUNCATE even to the owner. Partition maintenance and retention go through SECURITY DEFINER
-- functions owned by the admin role.

CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit tables are append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TABLE audit_event (
    id            bigserial,
    at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    message_id    text,
    event         text NOT NULL,               -- past-tense fact: received, routed, delivered, purged, ...
    account       text,                        -- the sending establishment's account
    sender        text,
    recipient     text,
    patient_key   bytea,                       -- HMAC-SHA256 of the normalised INS (hub.audit.patient)
    doc_type      text,
    rule_version  integer,
    actor         text,                        -- who did it, for operator and auditor actions
    facts         jsonb NOT NULL DEFAULT '{}', -- never message content
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE INDEX audit_event_message ON audit_event (message_id, id);
CREATE INDEX audit_event_admin ON audit_event (event, at) WHERE message_id IS NULL;
CREATE TABLE audit_event_default PARTITION OF audit_event DEFAULT;

-- Insert-only search keys. kind: '*' every message, a account, s sender, r recipient, p patient (hex),
-- d document type, v rule-set version. Unique so that repeated facts are written once (ON CONFLICT DO NOTHING).
CREATE TABLE audit_message_key (
    kind          "char" NOT NULL,
    value         text NOT NULL,
    received_at   timestamptz NOT NULL,
    message_id    text NOT NULL,
    UNIQUE (kind, value, received_at, message_id)
) PARTITION BY RANGE (received_at);
CREATE TABLE audit_message_key_default PARTITION OF audit_message_key DEFAULT;

CREATE TABLE audit_seal (
    seq           bigint PRIMARY KEY,          -- 1, 2, 3 ... without gaps (one sealer at a time)
    part          date NOT NULL,               -- month (UTC) of every event in the block
    sealed_at     timestamptz NOT NULL DEFAULT now(),
    first_id      bigint NOT NULL,
    last_id       bigint NOT NULL,
    first_at      timestamptz NOT NULL,
    last_at       timestamptz NOT NULL,
    n             integer NOT NULL,
    sealed_to     bigint NOT NULL,             -- every event id <= sealed_to was final when this block was written
    ids           bigint[] NOT NULL,           -- the events, in chain order
    hashes        bytea[] NOT NULL,            -- h[i] = sha256(h[i-1] || audit_canonical(event i)), h[0] = prev_hash
    prev_hash     bytea NOT NULL,
    head_hash     bytea NOT NULL
);
CREATE INDEX audit_seal_last_at ON audit_seal (last_at);
CREATE INDEX audit_seal_part ON audit_seal (part);

CREATE TABLE audit_purge (
    id            bigserial PRIMARY KEY,
    purged_at     timestamptz NOT NULL DEFAULT now(),
    part          date NOT NULL,
    events        bigint NOT NULL,
    keys          bigint NOT NULL,
    blocks        bigint NOT NULL,
    retention_days integer NOT NULL,
    actor         text
);

CREATE TABLE audit_purge_boundary (
    seq           bigint PRIMARY KEY,          -- a purged block whose successor was kept
    head_hash     bytea NOT NULL,
    sealed_to     bigint NOT NULL,
    purge_id      bigint NOT NULL REFERENCES audit_purge(id)
);

CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON audit_event
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_message_key_append_only BEFORE UPDATE OR DELETE ON audit_message_key
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_seal_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_seal
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_purge_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_purge
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_purge_boundary_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_purge_boundary
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_event
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_event_default
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_message_key_no_truncate BEFORE TRUNCATE ON audit_message_key
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_message_key_no_truncate BEFORE TRUNCATE ON audit_message_key_default
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();

-- The canonical bytes of an event: a JSON array in PostgreSQL's jsonb text form (deterministic), UTC time with
-- microseconds. Changing this function invalidates every seal: never change it, add a new version instead.
CREATE FUNCTION audit_canonical(e audit_event) RETURNS bytea LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT convert_to(jsonb_build_array(
        1, e.id, to_char(e.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), e.event, e.message_id,
        e.account, e.sender, e.recipient, encode(e.patient_key, 'hex'), e.doc_type, e.rule_version, e.actor,
        e.facts)::text, 'UTF8')
$$;

CREATE FUNCTION audit_part(at timestamptz) RETURNS date LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT date_trunc('month', at AT TIME ZONE 'UTC')::date
$$;

CREATE FUNCTION audit_genesis() RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT sha256(convert_to('hub audit chain v1', 'UTF8'))
$$;

CREATE FUNCTION audit_chain_step(state bytea, seed bytea, item bytea) RETURNS bytea
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT sha256(coalesce(state, seed) || item)
$$;

-- audit_chain(seed, bytes) OVER (ORDER BY id): the running hash of a chain starting after `seed`.
CREATE AGGREGATE audit_chain(bytea, bytea) (SFUNC = audit_chain_step, STYPE = bytea);

-- Seal committed events with id <= upto and write their search keys (the caller guarantees that every id <= upto is final: see
-- hub.audit.chain). Returns the number of events sealed, at most max_events; -1 if another sealer is busy.
CREATE FUNCTION audit_seal_upto(upto bigint, max_events integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    last_seq bigint; head bytea; hw bigint; batch_to bigint; batch_n integer; p date;
BEGIN
    IF NOT pg_try_advisory_xact_lock(727002) THEN
        RETURN -1;
    END IF;
    SELECT seq, head_hash, sealed_to INTO last_seq, head, hw FROM (
        SELECT seq, head_hash, sealed_to FROM audit_seal
        UNION ALL SELECT seq, head_hash, sealed_to FROM audit_purge_boundary) s
    ORDER BY seq DESC LIMIT 1;
    last_seq := coalesce(last_seq, 0);
    head := coalesce(head, audit_genesis());
    hw := coalesce(hw, 0);
    IF upto <= hw THEN
        RETURN 0;
    END IF;
    SELECT max(id), count(*) INTO batch_to, batch_n
    FROM (SELECT id FROM audit_event WHERE id > hw AND id <= upto ORDER BY id LIMIT max_events) s;
    IF batch_n = 0 THEN
        RETURN 0;
    END IF;
    IF batch_n < max_events THEN
        batch_to := upto;
    END IF;
    FOR p IN SELECT DISTINCT audit_part(at) FROM audit_event WHERE id > hw AND id <= batch_to ORDER BY 1 LOOP
        last_seq := last_seq + 1;
        INSERT INTO audit_seal (seq, part, first_id, last_id, first_at, last_at, n, sealed_to, ids, hashes,
                                prev_hash, head_hash)
        SELECT last_seq, p, min(id), max(id), min(at), max(at), count(*), batch_to,
               array_agg(id ORDER BY id), array_agg(h ORDER BY id), head, (array_agg(h ORDER BY id DESC))[1]
        FROM (SELECT e.id, e.at, audit_chain(head, audit_canonical(e)) OVER (ORDER BY e.id) AS h
              FROM audit_event e
              WHERE e.id > hw AND e.id <= batch_to
                AND e.at >= (p::timestamp AT TIME ZONE 'UTC')
                AND e.at < ((p + interval '1 month')::timestamp AT TIME ZONE 'UTC')) c
        RETURNING head_hash INTO head;
    END LOOP;
    -- the search keys of the events just sealed, dated by their message's reception
    INSERT INTO audit_message_key (kind, value, received_at, message_id)
    SELECT DISTINCT k.kind::"char", k.value, coalesce(m.received_at, ev.at), ev.message_id
    -- keys come from the events that bring new ones (who, to whom, which patient, which document, which rules);
    -- delivery outcomes repeat a recipient already keyed at reception or routing
    FROM (SELECT * FROM audit_event WHERE id > hw AND id <= batch_to AND message_id IS NOT NULL
          AND event IN ('received', 'routed', 'transformed', 'notification_sent')) ev
    JOIN (SELECT d.message_id, (SELECT r.at FROM audit_event r WHERE r.message_id = d.message_id
                                  AND r.event = 'received' ORDER BY r.id LIMIT 1) AS received_at
          FROM (SELECT DISTINCT message_id FROM audit_event
                WHERE id > hw AND id <= batch_to AND message_id IS NOT NULL) d) m USING (message_id)
    CROSS JOIN LATERAL (
        SELECT '*', CASE WHEN ev.event = 'received' THEN '' END UNION ALL
        SELECT 'a', ev.account UNION ALL
        SELECT 's', lower(ev.sender) UNION ALL
        SELECT 'r', lower(ev.recipient) UNION ALL
        SELECT 'r', lower(x) FROM jsonb_array_elements_text(CASE WHEN jsonb_typeof(ev.facts -> 'recipients')
                                   = 'array' THEN ev.facts -> 'recipients' END) AS x UNION ALL
        SELECT 'p', encode(ev.patient_key, 'hex') UNION ALL
        SELECT 'd', ev.doc_type UNION ALL
        SELECT 'v', ev.rule_version::text) AS k(kind, value)
    WHERE k.value IS NOT NULL
    ON CONFLICT DO NOTHING;
    RETURN batch_n;
END $$;

-- Create the monthly partitions of audit_event and audit_message_key for the month containing `month`; rows
-- already waiting in a default partition for that month are moved in. Returns true if something was created.
CREATE FUNCTION audit_ensure_partition(month date) RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = public, pg_temp AS $$
DECLARE
    m date := date_trunc('month', month)::date;
    lo text := to_char(m, 'YYYY-MM-DD') || ' 00:00:00+00';
    hi text := to_char((m + interval '1 month')::date, 'YYYY-MM-DD') || ' 00:00:00+00';
    suffix text := to_char(m, '"y"YYYY"m"MM');
    parent text; col text; t text; d text; created boolean := false; waiting boolean;
BEGIN
    FOR parent, col IN VALUES ('audit_event', 'at'), ('audit_message_key', 'received_at') LOOP
        t := parent || '_' || suffix;
        d := parent || '_default';
        CONTINUE WHEN to_regclass(t) IS NOT NULL;
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE %I >= %L AND %I < %L)', d, col, lo, col, hi)
            INTO waiting;
        IF waiting THEN
            EXECUTE format('LOCK TABLE %I IN ACCESS EXCLUSIVE MODE', d);
            EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS)', t, parent);
            EXECUTE format('INSERT INTO %I SELECT * FROM %I WHERE %I >= %L AND %I < %L', t, d, col, lo, col, hi);
            EXECUTE format('ALTER TABLE %I DISABLE TRIGGER USER', d);
            EXECUTE format('DELETE FROM %I WHERE %I >= %L AND %I < %L', d, col, lo, col, hi);
            EXECUTE format('ALTER TABLE %I ENABLE TRIGGER USER', d);
            EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', parent, t, lo, hi);
        ELSE
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)', t, parent, lo, hi);
        END IF;
        EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %I FOR EACH STATEMENT'
                       ' EXECUTE FUNCTION audit_refuse_change()', parent || '_no_truncate', t);
        created := true;
    END LOOP;
    RETURN created;
END $$;

CREATE FUNCTION audit_ensure_partitions(months_ahead integer) RETURNS integer LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE n integer := 0; i integer;
BEGIN
    FOR i IN 0 .. greatest(months_ahead, 0) LOOP
        IF audit_ensure_partition((audit_part(now()) + make_interval(months => i))::date) THEN
            n := n + 1;
        END IF;
    END LOOP;
    RETURN n;
END $$;

-- The shortest event retention the runtime role may ask for. An admin may replace this function.
CREATE FUNCTION audit_retention_floor() RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 30 $$;

-- Drop whole months older than the retention: events, search keys and seal blocks, keeping the head hash at each
-- purge boundary; record one audit_purge row and one `purged` event per month.
CREATE FUNCTION audit_drop_expired(retention_days integer, who text)
    RETURNS TABLE (part date, events bigint, keys bigint, blocks bigint)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    cutoff timestamptz;
    m date; purge_id bigint; suffix text; n_ev bigint; n_keys bigint; n_blocks bigint;
BEGIN
    IF retention_days < audit_retention_floor() THEN
        RAISE EXCEPTION 'event retention of % days is below the floor of % days', retention_days,
            audit_retention_floor() USING ERRCODE = 'invalid_parameter_value';
    END IF;
    cutoff := now() - make_interval(days => retention_days);
    FOR m IN
        SELECT to_date(substr(c.relname, length('audit_event_') + 1), '"y"YYYY"m"MM')
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'audit_event'::regclass AND c.relname ~ '^audit_event_y[0-9]{4}m[0-9]{2}$'
        ORDER BY 1
    LOOP
        CONTINUE WHEN ((m + interval '1 month')::timestamp AT TIME ZONE 'UTC') > cutoff;
        suffix := to_char(m, '"y"YYYY"m"MM');
        EXECUTE format('LOCK TABLE %I IN ACCESS EXCLUSIVE MODE', 'audit_event_' || suffix);
        EXECUTE format('SELECT count(*) FROM %I', 'audit_event_' || suffix) INTO n_ev;
        n_keys := 0;
        IF to_regclass('audit_message_key_' || suffix) IS NOT NULL THEN
            EXECUTE format('SELECT count(*) FROM %I', 'audit_message_key_' || suffix) INTO n_keys;
        END IF;
        LOCK TABLE audit_seal IN SHARE ROW EXCLUSIVE MODE;   -- no sealing while the boundary is taken
        SELECT count(*) INTO n_blocks FROM audit_seal s WHERE s.part = m;
        INSERT INTO audit_purge (part, events, keys, blocks, retention_days, actor)
        VALUES (m, n_ev, n_keys, n_blocks, retention_days, who) RETURNING id INTO purge_id;
        INSERT INTO audit_purge_boundary (seq, head_hash, sealed_to, purge_id)
        SELECT s.seq, s.head_hash, s.sealed_to, purge_id FROM audit_seal s
        WHERE s.part = m AND NOT EXISTS (SELECT 1 FROM audit_seal n WHERE n.seq = s.seq + 1 AND n.part = m);
        ALTER TABLE audit_seal DISABLE TRIGGER audit_seal_append_only;
        DELETE FROM audit_seal s WHERE s.part = m;
        ALTER TABLE audit_seal ENABLE TRIGGER audit_seal_append_only;
        EXECUTE format('DROP TABLE %I', 'audit_event_' || suffix);
        EXECUTE format('DROP TABLE IF EXISTS %I', 'audit_message_key_' || suffix);
        INSERT INTO audit_event (event, actor, facts)
        VALUES ('purged', who, jsonb_build_object('scope', 'events', 'month', to_char(m, 'YYYY-MM'),
                'events', n_ev, 'blocks', n_blocks, 'retention_days', retention_days));
        part := m; events := n_ev; keys := n_keys; blocks := n_blocks;
        RETURN NEXT;
    END LOOP;
END $$;

SELECT audit_ensure_partitions(2);
