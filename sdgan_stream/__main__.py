"""``python -m sdgan_stream`` = the ``sdgan-stream`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
