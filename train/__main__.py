"""`python -m train ...`: the `train` command from a checkout (torchrun runs the installed `train` script instead:
`torchrun --no-python train ...`, which never imports the working folder)."""

import sys

from train.cli import main

sys.exit(main())
