"""``python -m tidescale_injector [flags]``: the same as ``tidescale injector``."""

import sys

from tidescale_injector.server import main

sys.exit(main(sys.argv[1:]))
