"""`python -m pmemd ARGS`: the `pmemd` program (`pmemd.process.startup.main`)."""

import sys

from pmemd.process.startup import main

sys.exit(main())
