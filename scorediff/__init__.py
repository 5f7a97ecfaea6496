"""scorediff: the application around the library.

``jax_impl`` (the JAX/Flax product) and ``torch_ref`` (the PyTorch reference) are libraries;
this package is the application built on them: today the sampler demo
(``python -m scorediff.demo``, ``make run``). It is the only package that imports both
``jax_impl`` and ``torch_ref``; nothing in ``jax_impl``, ``torch_ref`` or ``spec`` imports
it (dependencies point one way: scorediff -> jax_impl, torch_ref -> spec).
"""
