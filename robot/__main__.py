"""`python -m robot` runs the command line."""

import sys

from robot.cli import main

sys.exit(main())
