"""The data package's error types, and the progress callback its slow steps share.

Kept apart so every module of :mod:`pipeline.data` imports them without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.host.exitcodes import UserError

ProgressFn = Callable[[int, int], None]  # called with (done, total) while a slow step runs


class DataError(UserError, ValueError):
    """The data cannot be used as given; the message says which file, folder or class, and what to do."""


class DecodeBudgetError(DataError):
    """One image needs more memory to decode than the decode budget allows."""
