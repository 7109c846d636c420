-- Certificate revocation lists (hub.revocation): one row per CRL URL, learned from a certificate's CRL distribution
-- points or configured (revocation.crl_urls). The last good CRL (DER, signature checked when fetched and again
-- when loaded) is kept until a newer one is fetched; every hub process and node uses this cache.
CREATE TABLE crl (
    url            text PRIMARY KEY,
    configured     boolean NOT NULL DEFAULT false,
    der            bytea,
    sha256         text,
    issuer         text,                          -- RFC 4514, for operators
    this_update    timestamptz,
    next_update    timestamptz,
    entries        int,
    fetched_at     timestamptz,                   -- last good fetch
    last_error     text,                          -- last failed fetch (NULL after a good one)
    last_error_at  timestamptz,
    next_fetch_at  timestamptz NOT NULL DEFAULT now(),
    learned_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX crl_due ON crl (next_fetch_at);
