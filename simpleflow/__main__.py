"""``python -m simpleflow``: the same command line as the ``simpleflow`` script."""

from __future__ import annotations

import sys

from simpleflow.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
