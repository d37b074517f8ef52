"""DVC stage `report` (dvc.yaml): `python stages/report.py --help` says its arguments."""

import sys

from medimg.commands import report
from medimg.commands.base import run_stage

if __name__ == "__main__":
    run_stage(report.COMMAND, sys.argv[1:])
