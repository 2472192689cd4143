"""``python -m oarfutures``: the command line over a job folder (see ``oarfutures.cli``)."""

import sys

from oarfutures.cli import main

sys.exit(main())
