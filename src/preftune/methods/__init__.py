"""Training methods. Each is thin: it builds its parts and offers ``batches(epoch)`` and ``loss``
to the one loop in :mod:`preftune.loop`."""
