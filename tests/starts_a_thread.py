"""A module for the ``preload`` tests that starts a thread when imported, as numpy's BLAS does."""

import threading
import time

threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
