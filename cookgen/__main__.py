"""``python -m cookgen ...``: the ``cookgen`` console script, so that
``torchrun --nproc_per_node N -m cookgen ...`` can launch it."""

import sys

from cookgen.cli import main

if __name__ == "__main__":
    sys.exit(main())
