"""The app's tasks: :mod:`lib.bundles` (which bundles to serve) and :mod:`lib.infers` (the classification task)."""
