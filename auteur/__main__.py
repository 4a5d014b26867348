"""``python -m auteur ...``: the ``auteur`` console script, so that
``torchrun --nproc_per_node N -m auteur ...`` can launch it."""

import sys

from auteur.cli import main

if __name__ == "__main__":
    sys.exit(main())
