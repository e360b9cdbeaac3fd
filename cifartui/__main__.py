"""`python -m cifartui`, which is what `torchrun -m cifartui train ...` runs in each process."""

import sys

from cifartui.cli import main

sys.exit(main())
