"""The append-only, hash-chained audit trail: one timeline per message, never message content.

    store.py      Event, record(conn, *events), timeline(conn, message_id): the write contract
    chain.py      AuditSealer (run(pool, stop) / seal_once(conn)): chains events and writes search keys;
                  verify(conn, since) -> VerifyReport
    search.py     Filters, search(conn, filters, scope=, cursor=, limit=), message_timeline, CSV / JSON export
    patient.py    patient_key(ins, key), load_patient_key(settings): the INS only as a keyed hash
    retention.py  retention_loop(pool, settings, stop), purge(conn, settings): partitions, bodies, expired months
    tokens.py     API tokens (auditor / operator roles), stored as SHA-256
    cli.py        `hub audit ...`, `hub tokens ...`

Schema: hub/migrations/0002_audit.sql, 0030_api_token.sql. Design and operator guide: docs/audit.md.
"""
