"""``python -m scripts.bench`` (from the repository root): see :mod:`scripts.bench.runner`."""

import sys

from .runner import main

sys.exit(main())
