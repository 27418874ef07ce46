"""`python -m train.bench ...` = `bench ...`."""

import sys

from train.bench.cli import main

sys.exit(main())
