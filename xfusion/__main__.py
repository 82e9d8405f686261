"""``python -m xfusion ...``: the ``xfusion`` command (:func:`xfusion.cli.main`), for environments where the console
script is not on the PATH."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
