"""The built-in weight sources (filled in by the weight-plugin work)."""
