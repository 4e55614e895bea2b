"""Training engine: losses, metrics, handlers, resume, run record and the functions bundle configs call.

Submodules are imported on use (``from cxrkit.engine import workflow``) so that
importing :mod:`cxrkit.engine` stays cheap.
"""
