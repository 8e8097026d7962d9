"""``python -m minato``."""

import sys

from minato.server.cli import main

sys.exit(main())
