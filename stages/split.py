"""DVC stage `split`: `python stages/split.py --dataset <name>` (see dvc.yaml)."""

import sys

from medimg.cli import main

if __name__ == "__main__":
    sys.exit(main(["split", *sys.argv[1:]]))
