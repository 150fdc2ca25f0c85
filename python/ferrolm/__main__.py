"""``python -m ferrolm``: the same as the ``ferrolm`` command."""

import sys

from ferrolm.cli import main

sys.exit(main())
