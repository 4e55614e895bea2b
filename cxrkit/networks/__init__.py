"""Networks: backbones (registry ``cxrkit.backbones``) and classification heads."""
