"""The executor core: futures, batches, the shared poller. It knows no scheduler, only ``backends.base.Backend``."""
