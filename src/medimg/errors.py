"""The one base of the errors a user can act on.

Bad input (a key of params.yaml, a file, an option) or a stage run out of order
raises a subclass of `UserError` whose message names the file, key or value and
the fix. The command line and the DVC stages (medimg.commands.base) print it as
one line and exit 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a stage run out of order: shown as one line, without a traceback."""
