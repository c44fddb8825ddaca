"""vit_jax: vision transformers in JAX/Flax, trained with supervised, MAE, EVA and EsViT objectives."""
__version__ = "0.1.0"
