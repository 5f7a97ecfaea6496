"""scorediff's PyTorch reference: the same modules and public names as ``jax_impl``."""
