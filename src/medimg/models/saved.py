"""Saved models (.keras files) loaded, for inference and for transfer learning alike.

A file that is damaged, of another format or hostile ends in one line naming it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import keras

from medimg.errors import UserError

# Keras's messages can span lines and quote the whole config; a message of ours stays one
# line, so the reason is cut to this many characters.
_REASON_CHARS = 200


class ModelFileError(UserError, ValueError):
    """A saved model file cannot be loaded; the message is one line naming the file.

    Damaged, another format, or hostile: a config naming something that is not a Keras
    object (e.g. `os.system`) is refused by Keras, which then raises TypeError, KeyError
    or ValueError from deep inside its deserialiser.
    """


def load_model(path: Path) -> keras.Model:
    """Load a saved .keras model for inference (not compiled: no loss or metrics needed).

    Raises FileNotFoundError when there is no file, ModelFileError when it is not a
    loadable .keras file (any of the cases of ModelFileError).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved model there; run the train stage first")
    if not zipfile.is_zipfile(path):  # Keras itself would say "File not found"
        raise ModelFileError(
            f"{path}: not a Keras model file (a .keras file is a zip archive; this one is "
            "not: truncated, or another format)"
        )
    try:
        # safe_mode (Keras's default, stated because it matters here): a config holding a
        # lambda's bytecode is refused instead of run.
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as err:  # any failure inside Keras: one line (see ModelFileError)
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        if len(reason) > _REASON_CHARS:
            reason = reason[: _REASON_CHARS - 3] + "..."
        raise ModelFileError(f"{path}: not a loadable Keras model ({reason})") from None
