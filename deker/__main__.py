"""``python -m deker``: the ``deker`` command (see :mod:`deker.cli`)."""

import sys

from deker.cli import main

sys.exit(main())
