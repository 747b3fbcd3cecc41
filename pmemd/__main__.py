"""`python -m pmemd ARGS`: the `pmemd` program (`pmemd.startup.main`)."""

import sys

from pmemd.startup import main

sys.exit(main())
