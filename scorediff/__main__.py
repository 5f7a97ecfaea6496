"""``python -m scorediff``: the command line (``scorediff.cli``)."""

import sys

from scorediff.cli import main

sys.exit(main())
