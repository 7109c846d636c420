-- Healthcare-professional directory (hub.directory): imported national files and local preferences.
--
-- Two sources, each swapped atomically and independently:
--   "mssante"  Extraction_Correspondance_MSSante -> directory_mailbox_{a,b}
--   "ps"       PS_LibreAcces_Personne_activite   -> directory_activity_{a,b}, and derived from it
--                                                   directory_practitioner_{a,b}, directory_structure_{a,b}
-- Each source has two physical slots. An import TRUNCATEs the inactive slot (short transaction), COPYs the file
-- into it and, in the same transaction that finishes the load, switches directory_current to it. Readers go
-- through the views below, which read the pointer and the slot in one statement (one snapshot): they see the old
-- generation or the new one, never a mix. The previous generation stays in the other slot until the next import.
-- The runtime role may TRUNCATE and COPY (granted by hub.db._grant_runtime), so imports need no DDL; it ANALYZEs
-- through the SECURITY DEFINER function directory_analyze().
--
-- directory_preference is local (set by the operator) and never touched by imports.

CREATE TABLE directory_import (
    id             serial PRIMARY KEY,
    source         text NOT NULL CHECK (source IN ('mssante', 'ps')),
    file           text NOT NULL,                 -- file name as given (and zip member)
    sha256         text,                          -- of the text read
    slot           text NOT NULL CHECK (slot IN ('a', 'b')),
    status         text NOT NULL CHECK (status IN ('loading', 'done', 'refused', 'failed')),
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    lines          integer NOT NULL DEFAULT 0,    -- data lines read (header excluded)
    loaded         integer NOT NULL DEFAULT 0,    -- rows now in the directory
    added          integer NOT NULL DEFAULT 0,
    removed        integer NOT NULL DEFAULT 0,
    changed        integer NOT NULL DEFAULT 0,
    rejected       integer NOT NULL DEFAULT 0,    -- malformed lines skipped
    duplicates     integer NOT NULL DEFAULT 0,    -- lines repeating an address already loaded (first kept)
    rejected_lines integer[] NOT NULL DEFAULT '{}',  -- the first few rejected line numbers
    message        text                            -- why refused / failed
);

CREATE TABLE directory_current (
    source         text PRIMARY KEY CHECK (source IN ('mssante', 'ps')),
    slot           text NOT NULL CHECK (slot IN ('a', 'b')),
    import_id      integer REFERENCES directory_import(id),
    switched_at    timestamptz NOT NULL DEFAULT now()
);
INSERT INTO directory_current (source, slot) VALUES ('mssante', 'a'), ('ps', 'a');

-- Operator preferences, keyed by a lower-case mailbox address or a national id (IDNPS: 8+RPPS / 0+ADELI).
CREATE TABLE directory_preference (
    key               text PRIMARY KEY,
    paper             boolean NOT NULL DEFAULT false,   -- send on paper only (the caller's rules decide)
    preferred_format  text,                             -- e.g. pdf, cda, hprim, hl7v2
    preferred_mailbox text,                             -- for a national id: the mailbox to use when several
    note              text,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (preferred_mailbox IS NULL OR key NOT LIKE '%@%')
);

-- One row per published mailbox (address deduplicated, lower case), denormalised as the file publishes it.
CREATE TABLE directory_mailbox_a (
    address            text PRIMARY KEY,
    mailbox_type       text NOT NULL,            -- PER, ORG, APP, CAB
    pp_id_type         text,                     -- 8 RPPS, 0 ADELI
    pp_id              text,
    national_id        text,                     -- IDNPS of the owner (PER, CAB)
    structure_id_type  text,
    structure_id       text,                     -- as published (idNatSt)
    finess             text,                     -- derived when the structure id is a FINESS
    siret              text,                     -- derived when the structure id is a SIRET
    service            text,
    civility           text,
    last_name          text,
    first_name         text,
    category_code      text,
    category_label     text,
    profession_code    text,
    profession_label   text,
    specialty_code     text,
    specialty_label    text,
    dematerialisation  boolean,
    structure_name     text,
    structure_brand    text,
    address_lines      text,                     -- L2..L5 joined
    town               text,
    postcode           text,
    department         text,
    country            text,
    row_hash           bigint NOT NULL,          -- of the source line, to count changes between generations
    search             text NOT NULL             -- accent- and case-folded words (hub.directory.normalize.fold)
);
CREATE INDEX directory_mailbox_a_national_id ON directory_mailbox_a (national_id) WHERE national_id IS NOT NULL;
CREATE INDEX directory_mailbox_a_finess ON directory_mailbox_a (finess) WHERE finess IS NOT NULL;
CREATE INDEX directory_mailbox_a_structure ON directory_mailbox_a (structure_id) WHERE structure_id IS NOT NULL;
CREATE TABLE directory_mailbox_b (LIKE directory_mailbox_a INCLUDING ALL);

-- One row per line of PS_LibreAcces_Personne_activite (a practitioner's activity at a site).
CREATE TABLE directory_activity_a (
    national_id        text NOT NULL,
    pp_id_type         text,
    pp_id              text,
    civility           text,
    last_name          text,
    first_name         text,
    profession_code    text,
    profession_label   text,
    category_code      text,
    category_label     text,
    specialty_code     text,
    specialty_label    text,
    practice_mode      text,                     -- L libéral, S salarié, B bénévole
    practice_mode_label text,
    siret              text,
    finess             text,                     -- site FINESS
    finess_legal       text,
    structure_tech_id  text,
    structure_name     text,
    structure_brand    text,
    address_lines      text,
    postcode           text,
    town               text,
    department         text,
    sector_code        text,
    sector_label       text,
    row_hash           bigint NOT NULL,
    pp_search          text NOT NULL,
    st_search          text NOT NULL
);
CREATE INDEX directory_activity_a_national_id ON directory_activity_a (national_id);
CREATE INDEX directory_activity_a_finess ON directory_activity_a (finess) WHERE finess IS NOT NULL;
CREATE TABLE directory_activity_b (LIKE directory_activity_a INCLUDING ALL);

-- Derived from the activities at import time: one row per practitioner / per structure (site).
CREATE TABLE directory_practitioner_a (
    national_id        text PRIMARY KEY,
    pp_id_type         text,
    pp_id              text,
    civility           text,
    last_name          text,
    first_name         text,
    profession_code    text,
    profession_label   text,
    specialty_code     text,
    specialty_label    text,
    practice_modes     text,                     -- distinct modes, comma-separated (e.g. "L,S")
    activities         integer NOT NULL,
    row_hash           bigint NOT NULL,          -- bit_xor of the activities' hashes
    search             text NOT NULL
);
CREATE TABLE directory_practitioner_b (LIKE directory_practitioner_a INCLUDING ALL);

CREATE TABLE directory_structure_a (
    structure_key      text PRIMARY KEY,         -- 1+FINESS, else 3+SIRET, else T+technical id
    finess             text,
    siret              text,
    name               text,
    brand              text,
    address_lines      text,
    postcode           text,
    town               text,
    department         text,
    sector_code        text,
    sector_label       text,
    search             text NOT NULL
);
CREATE INDEX directory_structure_a_finess ON directory_structure_a (finess) WHERE finess IS NOT NULL;
CREATE INDEX directory_structure_a_siret ON directory_structure_a (siret) WHERE siret IS NOT NULL;
CREATE TABLE directory_structure_b (LIKE directory_structure_a INCLUDING ALL);

-- The current generation of each table. The uncorrelated sub-select becomes a one-time filter: only the current
-- slot is scanned. The data is public (Licence Ouverte), so the views are readable by every role (views are not
-- covered by hub.db._grant_runtime).
CREATE VIEW directory_mailbox AS
    SELECT * FROM directory_mailbox_a WHERE (SELECT slot FROM directory_current WHERE source = 'mssante') = 'a'
    UNION ALL
    SELECT * FROM directory_mailbox_b WHERE (SELECT slot FROM directory_current WHERE source = 'mssante') = 'b';
CREATE VIEW directory_activity AS
    SELECT * FROM directory_activity_a WHERE (SELECT slot FROM directory_current WHERE source = 'ps') = 'a'
    UNION ALL
    SELECT * FROM directory_activity_b WHERE (SELECT slot FROM directory_current WHERE source = 'ps') = 'b';
CREATE VIEW directory_practitioner AS
    SELECT * FROM directory_practitioner_a WHERE (SELECT slot FROM directory_current WHERE source = 'ps') = 'a'
    UNION ALL
    SELECT * FROM directory_practitioner_b WHERE (SELECT slot FROM directory_current WHERE source = 'ps') = 'b';
CREATE VIEW directory_structure AS
    SELECT * FROM directory_structure_a WHERE (SELECT slot FROM directory_current WHERE source = 'ps') = 'a'
    UNION ALL
    SELECT * FROM directory_structure_b WHERE (SELECT slot FROM directory_current WHERE source = 'ps') = 'b';
GRANT SELECT ON directory_mailbox, directory_activity, directory_practitioner, directory_structure TO PUBLIC;

-- ANALYZE of a freshly loaded slot, callable by the runtime role (ANALYZE needs the owner). Besides fresh
-- statistics, it invalidates the plans readers have cached for the slot (COPY alone does not), so no cached plan
-- made while the slot was empty (a sequential scan) survives the switch.
CREATE FUNCTION directory_analyze(p_source text, p_slot text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF p_slot NOT IN ('a', 'b') THEN
        RAISE EXCEPTION 'directory_analyze: bad slot %', p_slot;
    END IF;
    IF p_source = 'mssante' THEN
        EXECUTE format('ANALYZE directory_mailbox_%s', p_slot);
    ELSIF p_source = 'ps' THEN
        EXECUTE format('ANALYZE directory_activity_%1$s, directory_practitioner_%1$s, directory_structure_%1$s',
                       p_slot);
    ELSE
        RAISE EXCEPTION 'directory_analyze: bad source %', p_source;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION directory_analyze(text, text) FROM PUBLIC;   -- hub.db grants EXECUTE to the runtime role

-- Free-text search (hub.directory.lookup) scans the folded `search` column of the current generation: no word or
-- trigram index, on purpose. Maintaining a GIN index during COPY more than doubled the server's CPU time for a
-- national file (measured: 11.7 s against 5.9 s for 535,000 rows), and the embedded server has no pg_trgm.
