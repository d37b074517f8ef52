"""DVC stage `confirm` (dvc.yaml): `python stages/confirm.py --help` says its arguments."""

import sys

from medimg.commands import confirm
from medimg.commands.base import run_stage

if __name__ == "__main__":
    run_stage(confirm.COMMAND, sys.argv[1:])
