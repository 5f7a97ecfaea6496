"""scorediff's JAX/Flax core: SDEs, diffusion maths, losses, networks and samplers.

Every module here has a PyTorch twin of the same name in ``torch_ref``; the parity tests
in ``parity_tests`` prove both compute the same numbers.
"""
