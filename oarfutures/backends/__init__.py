"""The schedulers: one module each behind the ``base.Backend`` interface, and the commands and parameters they share."""
