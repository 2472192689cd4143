"""``python -m oarfutures.worker FOLDER BATCH INDEX``: what every job script runs (see ``run``)."""
import sys

from oarfutures.worker.run import main

sys.exit(main(sys.argv[1:]))
