"""python -m gchat: the same as the gchat console script."""

import sys

from gchat.cli import main

sys.exit(main())
