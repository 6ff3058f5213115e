"""The project's own error types. Command-line entry points print these as one line
(``error: ...``) and exit with status 2; every other exception is an internal bug and keeps
its traceback."""

from __future__ import annotations


class JaxpflError(Exception):
    """Base of the errors a user can fix; the message says what to do."""


class ConfigError(JaxpflError, ValueError):
    """An invalid setting (out of range, unknown name, incompatible combination)."""


class DataError(JaxpflError, ValueError):
    """Bad or missing data; the message says what to do."""


class RunError(JaxpflError, RuntimeError):
    """A run cannot continue (non-finite values, incompatible resume, missing checkpoint)."""


__all__ = ["ConfigError", "DataError", "JaxpflError", "RunError"]
