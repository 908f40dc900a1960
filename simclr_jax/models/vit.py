"""Vision Transformer encoders (Dosovitskiy et al. 2021): patch embedding, position embedding,
pre-LN transformer blocks (multi-head self-attention and a GELU MLP), final LayerNorm, and the
[CLS] token or the mean of the patch tokens as h; optional dropout and stochastic depth.

Sizes as in the literature (width, depth, heads): ViT-Ti (192, 12, 3), ViT-S (384, 12, 6),
ViT-B (768, 12, 12), ViT-L (1024, 24, 16); the MLP is 4x the width. Any patch size
(config.model.patch_size: 16 for ImageNet, 4 for CIFAR's 32x32, i.e. 64 tokens).
config.model.width_multiplier scales the width (the heads stay), for small test models;
config.model.depth (0: the size's) sets the number of blocks, e.g. shallower ViTs for short runs.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# name -> (width, depth, heads).
SIZES = {
    'vit_ti': (192, 12, 3),
    'vit_s': (384, 12, 6),
    'vit_b': (768, 12, 12),
    'vit_l': (1024, 24, 16),
}
POOLS = ('cls', 'gap')
POSITION_EMBEDDINGS = ('learned', 'sincos')
_DENSE_INIT = nn.initializers.xavier_uniform()

# The encoder family interface (models/encoders.py).
NAMES = tuple(SIZES)


def width_of(model_config) -> int:
  return int(round(SIZES[model_config.name][0] * model_config.width_multiplier))


def depth_of(model_config) -> int:
  # A config.json saved before config.model.depth existed has the size's depth.
  return model_config.get('depth', 0) or SIZES[model_config.name][1]


def validate(model_config):
  width, _, heads = SIZES[model_config.name]
  scaled = width_of(model_config)
  if scaled < heads or scaled % heads:
    raise ValueError(
        f'config.model.width_multiplier={model_config.width_multiplier} gives {model_config.name} '
        f'a width of {scaled}, which its {heads} heads do not divide; pick a multiplier that '
        f'keeps {width} x multiplier a multiple of {heads}.'
    )
  if not (isinstance(model_config.patch_size, int) and model_config.patch_size >= 1):
    raise ValueError(
        f'config.model.patch_size={model_config.patch_size!r} must be an integer >= 1.'
    )
  depth = model_config.get('depth', 0)
  if not (isinstance(depth, int) and depth >= 0):
    raise ValueError(
        f"config.model.depth={depth!r} must be an integer >= 0 (0: {model_config.name}'s "
        f'{SIZES[model_config.name][1]} blocks).'
    )
  for name in ('dropout', 'drop_path'):
    if not 0 <= model_config[name] < 1:
      raise ValueError(f'config.model.{name}={model_config[name]} must be in [0, 1).')
  if model_config.pool not in POOLS:
    raise ValueError(f'config.model.pool={model_config.pool!r} is not known; use one of {POOLS}.')
  if model_config.position_embedding not in POSITION_EMBEDDINGS:
    raise ValueError(
        f'config.model.position_embedding={model_config.position_embedding!r} is not known; use '
        f'one of {POSITION_EMBEDDINGS}.'
    )


def drop_path(branch, rate, rng):
  """Stochastic depth: each example's residual branch is zeroed with probability `rate`, and
  kept ones are scaled by 1 / (1 - rate) so that the expectation is unchanged."""
  keep = jax.random.bernoulli(rng, 1.0 - rate, (branch.shape[0],) + (1,) * (branch.ndim - 1))
  return jnp.where(keep, branch / (1.0 - rate), jnp.zeros_like(branch))


def drop_path_rates(rate: float, depth: int) -> list[float]:
  """Block i of `depth` drops its branches with rate * i / (depth - 1): 0 for the first
  block, `rate` for the last (Huang et al. 2016's linear rule, as DeiT)."""
  return [rate * i / max(depth - 1, 1) for i in range(depth)]


def sincos_position_embedding(grid: int, width: int) -> np.ndarray:
  """Fixed 2-D sine-cosine embedding [grid * grid, width] (MoCo v3): a quarter of the channels
  each for sin and cos of the row and the column, at frequencies 1 / 10000^(k / (width / 4))."""
  if width % 4:
    raise ValueError(f'The sin-cos position embedding needs a width divisible by 4, not {width}.')
  rows, cols = np.meshgrid(
      np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing='ij'
  )
  quarter = width // 4
  omega = 1.0 / 10000 ** (np.arange(quarter) / quarter)
  parts = []
  for position in (rows.reshape(-1), cols.reshape(-1)):
    angles = position[:, None] * omega[None]
    parts += [np.sin(angles), np.cos(angles)]
  return np.concatenate(parts, axis=1).astype(np.float32)


class MultiHeadSelfAttention(nn.Module):
  """softmax(q k^T / sqrt(d)) v per head, with one qkv projection and an output projection."""

  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    batch, tokens, width = x.shape
    head_dim = width // self.heads
    qkv = nn.Dense(3 * width, kernel_init=_DENSE_INIT, dtype=self.dtype, name='qkv')(x)
    qkv = qkv.reshape(batch, tokens, 3, self.heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / math.sqrt(head_dim)
    # The softmax in at least float32: bfloat16 logits would round the weights coarsely.
    softmax_dtype = jnp.promote_types(self.dtype, jnp.float32)
    weights = nn.softmax(logits.astype(softmax_dtype), axis=-1).astype(self.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(batch, tokens, width)
    return nn.Dense(width, kernel_init=_DENSE_INIT, dtype=self.dtype, name='proj')(out)


class Block(nn.Module):
  """x + MHSA(LN(x)), then x + MLP(LN(x)): the pre-LN transformer block.

  In training, dropout follows the attention's output projection and both MLP layers, and
  each residual branch is dropped per example with rate `drop_path` (`drop_path`).
  """

  heads: int
  mlp_ratio: int = 4
  dtype: Any = jnp.float32
  dropout: float = 0.0
  drop_path: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    width = x.shape[-1]

    def regularised(branch):
      branch = nn.Dropout(self.dropout)(branch, deterministic=not train)
      if train and self.drop_path > 0:
        branch = drop_path(branch, self.drop_path, self.make_rng('dropout'))
      return branch

    y = MultiHeadSelfAttention(self.heads, self.dtype, name='attention')(
        nn.LayerNorm(dtype=self.dtype, name='norm1')(x)
    )
    x = x + regularised(y)
    y = nn.LayerNorm(dtype=self.dtype, name='norm2')(x)
    y = nn.Dense(self.mlp_ratio * width, kernel_init=_DENSE_INIT, dtype=self.dtype, name='fc1')(y)
    y = nn.Dropout(self.dropout)(nn.gelu(y), deterministic=not train)
    y = nn.Dense(width, kernel_init=_DENSE_INIT, dtype=self.dtype, name='fc2')(y)
    return x + regularised(y)


class ViT(nn.Module):
  """images [B, H, W, 3] -> h [B, width]."""

  width: int
  depth: int
  heads: int
  patch_size: int
  pool: str = 'cls'
  position_embedding: str = 'learned'
  dtype: Any = jnp.float32
  remat: bool = False
  dropout: float = 0.0
  drop_path: float = 0.0
  # The images' side that a learned position embedding is sized for (0: the first call's);
  # others get it resized bicubically.
  image_size: int = 0

  @nn.compact
  def __call__(self, images, train: bool = False):
    p = self.patch_size
    if images.shape[1] % p or images.shape[2] % p:
      raise ValueError(
          f'Images of {images.shape[1]}x{images.shape[2]} do not split into '
          f'{p}x{p} patches; set config.model.patch_size to a divisor.'
      )
    x = nn.Conv(
        self.width,
        (p, p),
        strides=(p, p),
        padding='VALID',
        dtype=self.dtype,
        kernel_init=nn.initializers.lecun_normal(),
        name='patch_embedding',
    )(images.astype(self.dtype))
    batch, grid = x.shape[0], x.shape[1]
    x = x.reshape(batch, grid * x.shape[2], self.width)
    if self.position_embedding == 'learned':
      base = self.image_size // p if self.image_size else grid
      tokens = base * base + (self.pool == 'cls')
      pos = self.param('position_embedding', nn.initializers.normal(0.02), (1, tokens, self.width))
      if grid != base:  # Other-sized images (multi-crop): the patches' grid resized, as DINO.
        cls_pos, patch_pos = pos[:, : tokens - base * base], pos[:, tokens - base * base :]
        patch_pos = jax.image.resize(
            patch_pos.reshape(1, base, base, self.width),
            (1, grid, grid, self.width),
            'cubic',
            antialias=False,
        )
        pos = jnp.concatenate([cls_pos, patch_pos.reshape(1, grid * grid, self.width)], axis=1)
    else:
      pos = sincos_position_embedding(grid, self.width)[None]
      if self.pool == 'cls':
        pos = np.concatenate([np.zeros((1, 1, self.width), np.float32), pos], axis=1)
    if self.pool == 'cls':
      cls = self.param('cls', nn.initializers.zeros, (1, 1, self.width))
      x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, self.width)).astype(x.dtype), x], 1)
    x = nn.Dropout(self.dropout)(x + jnp.asarray(pos, x.dtype), deterministic=not train)
    # `train` (argument 2, after the module and x) selects Python branches: static.
    block = nn.remat(Block, static_argnums=(2,)) if self.remat else Block
    for i, rate in enumerate(drop_path_rates(self.drop_path, self.depth)):
      x = block(
          self.heads, dtype=self.dtype, dropout=self.dropout, drop_path=rate, name=f'block{i + 1}'
      )(x, train)
    x = nn.LayerNorm(dtype=self.dtype, name='norm')(x)
    return x[:, 0] if self.pool == 'cls' else jnp.mean(x, axis=1)


def build(model_config, *, image_size, dtype, fine_tune_after_block=-1, remat=False):
  del fine_tune_after_block  # Freezing is the optimiser's (part_of).
  return ViT(
      width=width_of(model_config),
      depth=depth_of(model_config),
      heads=SIZES[model_config.name][2],
      patch_size=model_config.patch_size,
      pool=model_config.pool,
      position_embedding=model_config.position_embedding,
      dtype=dtype,
      remat=remat,
      # A config.json saved before these existed trained without them.
      dropout=model_config.get('dropout', 0.0),
      drop_path=model_config.get('drop_path', 0.0),
      image_size=image_size,
      name='encoder',
  )


def num_parts(model_config):
  """The embeddings (0) and each block (1..depth); the final LayerNorm goes with the last."""
  return depth_of(model_config) + 1


def part_of(model_config, names):
  if names[0].startswith('block'):
    return int(names[0][len('block') :])
  if names[0] == 'norm':
    return depth_of(model_config)  # With the last block.
  return 0  # Patch and position embeddings, [CLS].
