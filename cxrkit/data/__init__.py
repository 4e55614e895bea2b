"""Dataset adapters (registry ``cxrkit.datasets``), readers, transforms and splits."""
