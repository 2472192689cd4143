"""A module for the ``preload`` tests: it records which process imported it."""

import os

IMPORTED_BY = os.getpid()
