"""``python -m fedpriv``: the fedpriv command line."""

import sys

from fedpriv.cli import main

sys.exit(main())
