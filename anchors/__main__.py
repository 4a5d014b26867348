"""``python -m anchors ...``: the ``anchors`` console script, so that
``torchrun --nproc_per_node N -m anchors ...`` can launch it."""

import sys

from anchors.cli import main

if __name__ == "__main__":
    sys.exit(main())
