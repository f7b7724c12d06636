"""`python -m robot` runs the command line."""

import sys

from robot.cli.main import main

sys.exit(main())
