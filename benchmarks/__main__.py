"""``python -m benchmarks``: run every scenario (see :mod:`benchmarks.runner`)."""

import sys

from benchmarks.runner import main

sys.exit(main())
