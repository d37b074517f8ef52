"""The one error type of the fetch stage.

Kept in its own module because download, archive, layout and fetch code all
raise it and fetch.py imports the others.
"""

from __future__ import annotations

from medimg.errors import UserError


class FetchError(UserError, RuntimeError):
    """A dataset could not be fetched; the message names the file, URL or value at fault."""
