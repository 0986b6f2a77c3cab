"""``python -m sidesteer COMMAND ...``: the ``sidesteer`` command without its console script."""

import sys

from sidesteer.cli import main

sys.exit(main())
