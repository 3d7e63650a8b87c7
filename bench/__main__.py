"""
``python -m bench``: run the benchmark harness (see L{bench.run}).
"""

import sys

from bench.run import main

sys.exit(main())
