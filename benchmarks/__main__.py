"""``python -m benchmarks``: run every scenario (see :mod:`benchmarks.runner`).

The process first starts itself again with glibc's malloc settings of
:func:`benchmarks.runner.kept_memory_env` (freed memory kept for reuse), unless it has them.
"""

import os
import sys

from benchmarks.runner import kept_memory_env, main

env = kept_memory_env()
if env is not None and sys.platform.startswith("linux"):
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "benchmarks", *sys.argv[1:]], env)
sys.exit(main())
