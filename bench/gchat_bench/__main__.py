"""python -m gchat_bench: the same as the gchat-bench console script."""

import sys

from gchat_bench.cli import main

sys.exit(main())
