"""``python -m preftune``: the same as the ``preftune`` command."""

import sys

from .cli import main

sys.exit(main())
