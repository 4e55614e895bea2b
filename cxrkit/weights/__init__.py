"""Pretrained-weight sources (registry ``cxrkit.weights``)."""
