"""ae-jax: the classic autoencoder family in JAX/Flax, trained from Hydra configs."""

__version__ = "0.1.0"
