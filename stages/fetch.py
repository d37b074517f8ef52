"""DVC stage `fetch`: `python stages/fetch.py --dataset <name>` (see dvc.yaml)."""

import sys

from medimg.cli import main

if __name__ == "__main__":
    sys.exit(main(["fetch", *sys.argv[1:]]))
