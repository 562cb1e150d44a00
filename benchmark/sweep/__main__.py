"""``python -m benchmark.sweep``: one worker process (``worker.worker_main``), started by the
local executor with a JSON job on stdin.

The entry lives here, not under ``if __name__ == "__main__"`` in worker.py: this package's
``__init__`` imports worker.py (through local.py), and ``python -m benchmark.sweep.worker``
would then run a second copy of an already imported module (runpy's RuntimeWarning).
"""

import sys

from benchmark.sweep.worker import worker_main

sys.exit(worker_main())
