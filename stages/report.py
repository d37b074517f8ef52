"""DVC stage `report`: `python stages/report.py` (see dvc.yaml)."""

import sys

from medimg.cli import run_stage

if __name__ == "__main__":
    run_stage(["report", *sys.argv[1:]])
