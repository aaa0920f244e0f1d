"""Errors a user causes and can fix: the command line prints them as one line (cause and fix), no traceback."""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's inputs or the order of stages; the message says what to do."""


class MissingInputError(UserError):
    """A stage needs the output of an earlier stage that is not there (e.g. MID training before the teacher)."""


class StaleInputError(UserError):
    """An earlier stage's output was made from other inputs (e.g. a test store attacked on a since-retrained
    teacher) and would be scored silently with the wrong data."""
