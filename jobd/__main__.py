"""`python -m jobd` runs the `jobd` command."""

import sys

from jobd.cli import main

sys.exit(main())
