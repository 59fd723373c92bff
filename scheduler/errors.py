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


def describe_error(exc: BaseException) -> str:
    """One line about an unexpected error that carries no patient data.

    A database error's text can hold the values of the statement (SQLAlchemy's
    ``[parameters: ...]``, hidden by the engines' ``hide_parameters``) and the
    driver's detail lines (PostgreSQL's ``DETAIL: Failing row contains (...)``):
    only the first line of the driver's own message is kept, with its error
    code. Other errors are named by their type and first line.
    """
    orig = getattr(exc, "orig", None)
    if orig is not None:  # a SQLAlchemy DBAPIError: the driver's exception
        code = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)
        first = (str(orig).strip().splitlines() or [""])[0]
        return f"database error ({type(orig).__name__}{', ' + code if code else ''}): {first}"
    if type(exc).__module__.startswith("sqlalchemy"):
        first = (str(exc).strip().splitlines() or [""])[0]
        return f"database error ({type(exc).__name__}): {first}"
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
class FieldError(BadInput):
    """One field of a request is wrong; ``field`` names it (``mrn``, ``email``, ...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
