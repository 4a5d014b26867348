"""``python -m videogen ...``: the ``videogen`` console script, so that
``torchrun --nproc_per_node N -m videogen ...`` can launch it."""

import sys

from videogen.cli import main

if __name__ == "__main__":
    sys.exit(main())
