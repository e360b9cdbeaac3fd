"""`python -m cifartui.cli`, the same as the `cifartui` command."""

import sys

from cifartui.cli import main

sys.exit(main())
