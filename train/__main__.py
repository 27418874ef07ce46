"""`python -m train ...` (what torchrun runs): the `train` command."""

import sys

from train.cli import main

sys.exit(main())
