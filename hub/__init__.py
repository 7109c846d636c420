"""hub: a regional MSSanté interoperability hub.

Establishments (hospital HIS, lab LIS) send over SMTP; the hub resolves recipients in the national directory, applies
the operator's routing and transformation rules, relays into the MSSanté trust space over mutual TLS, and records
every step in a tamper-evident audit log.
"""

__version__ = "0.1.0"
