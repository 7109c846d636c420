-- SMTP AUTH attempts per client address, shared by every hub process and every node on this database, so that
-- smtp.auth_failures_per_minute holds for the whole hub (hub.intake.auth.FailureLimiter). A row is a failure, or
-- a verification in progress (not failed yet): at most `lim` of them per address in the window, so parallel
-- guesses cannot overshoot the limit; a success deletes its row. UNLOGGED: a PostgreSQL crash only resets counts.
CREATE UNLOGGED TABLE auth_attempt (
    id      bigserial PRIMARY KEY,
    peer    text NOT NULL,
    at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    failed  boolean NOT NULL DEFAULT false
);
CREATE INDEX auth_attempt_peer ON auth_attempt (peer, failed);
CREATE INDEX auth_attempt_at ON auth_attempt (at);

-- -1: blocked (lim failures within win); 0: allowed without a verification slot (verify = false), or no slot free
-- right now (verify = true: retry shortly); > 0: the slot reserved for one verification, to close with auth_end.
CREATE FUNCTION auth_begin(p text, lim int, win interval, verify boolean) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    failures int;
    busy int;
    slot bigint;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);     -- counters, not mail: no need to wait for the disk
    PERFORM pg_advisory_xact_lock(727011, hashtext(p));        -- count and reserve atomically, per address
    DELETE FROM auth_attempt WHERE at < clock_timestamp() - win;
    SELECT count(*) FILTER (WHERE failed), count(*) FILTER (WHERE NOT failed) INTO failures, busy
        FROM auth_attempt WHERE peer = p;
    IF failures >= lim THEN
        RETURN -1;
    END IF;
    IF NOT verify THEN
        RETURN 0;
    END IF;
    IF failures + busy >= lim THEN
        RETURN 0;
    END IF;
    INSERT INTO auth_attempt (peer) VALUES (p) RETURNING id INTO slot;
    RETURN slot;
END $$;

CREATE FUNCTION auth_end(slot bigint, ok boolean) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    IF ok THEN
        DELETE FROM auth_attempt WHERE id = slot;
    ELSE
        UPDATE auth_attempt SET failed = true, at = clock_timestamp() WHERE id = slot;
    END IF;
END $$;
