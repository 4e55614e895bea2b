"""Is the model looking at the lungs? Shortcut probes of a trained run."""
