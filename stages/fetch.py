"""DVC stage `fetch` (dvc.yaml): `python stages/fetch.py --help` says its arguments."""

import sys

from medimg.commands import fetch
from medimg.commands.base import run_stage

if __name__ == "__main__":
    run_stage(fetch.COMMAND, sys.argv[1:])
