"""``python -m uenn_geo``: the ``uenn-geo`` command (:func:`uenn_geo.cli.main`)."""

import sys

from uenn_geo.cli import main

if __name__ == "__main__":
    sys.exit(main())
