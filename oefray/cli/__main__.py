"""``python -m oefray.cli``: the ``oefray`` command."""

import sys

from oefray.cli import main

sys.exit(main())
