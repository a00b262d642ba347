"""Numerical kernels the models are built from (pure JAX, no Flax)."""
