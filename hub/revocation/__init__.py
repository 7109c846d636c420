"""Certificate revocation (CRLs) in the trust space: trust-space peers' certificates when the hub delivers (MSSanté
Référentiel #2 ECO.1.1.6: check revocation, whatever the CA) and establishments' client certificates when they
log in with one.

A certificate is covered by the CRLs its CRL distribution points name (http / https) and by the configured ones
(`revocation.crl_urls`) issued by its issuer. A CRL is used only when its signature verifies against its issuer's
certificate in the configured CA files (delivery.ca_file, smtp.client_ca_file) and it is current (before its
nextUpdate). Verdicts and what follows (`RevocationChecker.check(der) -> Decision`):

    good        accept
    revoked     refuse: delivery is deferred with the reason (a temporary failure: the peer may install a new
                certificate; the queue lifetime bounds it), a client certificate login gets 550 5.7.1
    unknown     a covering CRL cannot be used (fetch failed, past its nextUpdate, bad signature):
                revocation.unavailable = "defer" (default: delivery deferred / 451 4.7.0 with the reason) | "accept"
                (logged as a warning)
    uncovered   no distribution point and no configured CRL for its issuer: revocation.uncovered = "accept"
                (default) | "defer"

The CRL cache is the table `crl`, shared by every process and node: a URL is learned the first time a certificate
names it (fetched at once, within revocation.fetch_timeout) or configured; each process claims due URLs (FOR UPDATE
SKIP LOCKED: one process fetches each), fetches, verifies and stores them, and reloads what others stored. A CRL
is fetched again every revocation.refresh_interval and ahead of its nextUpdate (by a quarter of its validity, at
most refresh_interval); a failed fetch is retried every revocation.retry_interval while the last good CRL serves
until its nextUpdate. Audited: `crl_updated` (new content), `crl_fetch_failed` (a source starts failing).
Limits: only the leaf certificate is checked (Python's ssl exposes no verified chain before 3.13); no delta CRLs,
no OCSP. Settings read: revocation.*, delivery.ca_file, smtp.client_ca_file.
"""

from hub.revocation.checker import CrlError, Decision, RevocationChecker, Verdict

__all__ = ["CrlError", "Decision", "RevocationChecker", "Verdict"]
