"""How an exception reads in a log line or an error body."""

from __future__ import annotations


def describe(exc: BaseException) -> str:
    """The exception's message, or its type's name when the message is empty.

    `str(exc) or type(exc).__name__` rather than `exc or ...`: an exception object is
    always truthy, so the latter never falls back and logs `fetch failed ()`.
    """
    return str(exc) or type(exc).__name__
