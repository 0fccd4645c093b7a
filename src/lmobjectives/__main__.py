"""``python -m lmobjectives`` is ``lmobj``."""

import sys

from .cli import main

sys.exit(main())
