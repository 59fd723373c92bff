"""The few exceptions Cobalt raises on purpose.

The command line turns a ``BadInput`` into one line on stderr and exit status 2,
and any other ``CobaltError`` into one line and exit status 1.
"""


class CobaltError(Exception):
    """Base of every error Cobalt raises on purpose."""


class BadInput(CobaltError, ValueError):
    """The request cannot be carried out as given; nothing was changed."""


class NotFound(BadInput, LookupError):
    """No patient (or other record) answers to the name given."""


class ConfigError(BadInput):
    """cobalt.toml or the environment holds a value Cobalt cannot use."""


class SchemaOutOfDate(CobaltError):
    """The database is behind the newest migration: run ``cobalt db upgrade``."""


class FieldError(BadInput):
    """One field of a request is wrong; ``field`` names it (``mrn``, ``email``, ...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
