"""``python -m maintguard``: the same as the ``maintguard`` command."""

import sys

from ._cli import main

sys.exit(main())
