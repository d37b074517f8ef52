"""DVC stage `tune`: `python stages/tune.py --study <name>` (see dvc.yaml)."""

import sys

from medimg.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
