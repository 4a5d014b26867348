"""``python -m renderer ...``: the ``renderer`` console script, so that
``torchrun --nproc_per_node N -m renderer ...`` can launch it."""

import sys

from renderer.cli import main

if __name__ == "__main__":
    sys.exit(main())
