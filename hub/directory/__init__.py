"""The healthcare directory: national files imported into PostgreSQL, recipient resolution, operator lookups.

    formats.py    read Extraction_Correspondance_MSSante / PS_LibreAcces_Personne_activite lines (pure, streaming)
    importer.py   file -> COPY into the inactive generation -> checks -> atomic switch, history, audit
    store.py      the SQL (generations, imports, resolution statements, preferences)
    resolve.py    RCPT TO -> Resolution (directory, national id, hub-local, trust space unlisted, unresolved)
    lookup.py     operator search (address, ids, "name town"); http.py serves it; cli.py is `hub directory`
    normalize.py  folding and identifier recognition (pure)
    synth.py      synthetic files in the real layouts (tests, bench)
    trust.py      the authorised-domains list (liste blanche)
"""
