"""The hub's exception tree. Foreign errors (asyncpg, ssl, SMTP replies, lxml, zipfile) are mapped at the boundary
of the stage that meets them; nothing above a stage sees a foreign exception.

    HubError
     ├── ConfigError            settings or a command line that cannot be used (names the key / file:line)
     ├── TemporaryError         retry later: database down, peer unreachable, timeout, 4xx reply
     │    └── DatabaseUnavailable
     └── PermanentError         retrying will not help: 5xx reply, malformed input, policy refusal
          ├── InputError        malformed input; carries where (file, line, column / segment, field)
          │    ├── ImportFileError      a directory or trust-list file that must not replace the current one
          │    └── ParseError           HPRIM / HL7 / XML / ZIP content (see hub.transform)
          ├── PolicyError       refused by policy (relay, trust space, rules)
          └── TransformError    a transformation that cannot produce a valid document
"""

from __future__ import annotations


class HubError(Exception):
    """Root of every error the hub raises on purpose."""


class ConfigError(HubError):
    """A setting, file or argument that cannot be used. The message names the key or location."""


class TemporaryError(HubError):
    """Try again later; nothing is lost."""


class DatabaseUnavailable(TemporaryError):
    """PostgreSQL could not be reached or failed mid-transaction."""


class PermanentError(HubError):
    """Retrying will not help."""


class InputError(PermanentError):
    """Malformed input. `where` says where (\"file.txt:12\", \"OBX[3].5\", \"line 4, column 7\")."""

    def __init__(self, message: str, *, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class ImportFileError(InputError):
    """A file that is refused whole: the current data stays in place."""


class ParseError(InputError):
    """HPRIM, HL7 v2, XML or ZIP content that cannot be parsed."""


class PolicyError(PermanentError):
    """Refused by policy: relay, trust space, routing rule."""


class TransformError(PermanentError):
    """A transformation that cannot produce a valid document."""
