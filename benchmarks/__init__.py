"""Timed comparisons of the JAX product and the PyTorch reference on identical weights and
identical pre-drawn noise. Run ``python -m benchmarks.run`` (see ``benchmarks/README.md``).

Nothing here is imported by the library or the tests; timings never enter a test assertion.
"""
