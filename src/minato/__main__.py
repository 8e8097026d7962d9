"""``python -m minato``."""

import sys

from minato.cli import main

sys.exit(main())
