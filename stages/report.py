"""DVC stage `report`: `python stages/report.py` (see dvc.yaml)."""

import sys

from medimg.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
