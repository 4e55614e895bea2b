"""``python -m cxrkit`` (also what ``torchrun -m cxrkit`` runs)."""

import sys

from cxrkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
