"""``python -m director ...``: the ``director`` console script, so that
``torchrun --nproc_per_node N -m director ...`` can launch it."""

import sys

from director.cli import main

if __name__ == "__main__":
    sys.exit(main())
