"""DVC stage `tune` (dvc.yaml): `python stages/tune.py --help` says its arguments."""

import sys

from medimg.commands import tune
from medimg.commands.base import run_stage

if __name__ == "__main__":
    run_stage(tune.COMMAND, sys.argv[1:])
