"""`python -m tinymem.cli`: the same as the `tinymem` command."""

import sys

from tinymem.cli import main

sys.exit(main())
