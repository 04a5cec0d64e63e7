"""Allow ``python -m harmonize_bids``."""
import sys

from harmonize_bids.cli.run import main

if __name__ == "__main__":
    sys.exit(main())
