"""muse_jax: continuous emotion recognition (MuSe-Wild 2020) in JAX/Flax."""

__version__ = '0.1.0'
