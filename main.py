"""Entry point: `python main.py --strategy arbitrage --mode action` (see README.md)."""

import sys

from daemon.cli import main

if __name__ == "__main__":
    sys.exit(main())
