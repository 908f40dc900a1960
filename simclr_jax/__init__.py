"""SimCLR in JAX/Flax: contrastive self-supervised learning of image representations."""
