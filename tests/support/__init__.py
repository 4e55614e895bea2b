"""Helpers shared by the tests (no tests here): fabricated weight files and run folders, a tiny trained run,
a real MONAI Label server. The fixtures built on them are in ``tests/conftest.py``."""
