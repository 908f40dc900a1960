"""The reference's colour jitter written out, for the tf.data and JAX augmentation tests."""

import numpy as np
import tensorflow as tf


def reference_jitter(image, order, params, impl):
  """The four ops of the reference's color_jitter_rand in `order`, each clipped to [0, 1].

  Brightness and contrast are written out; saturation and hue are the TF ops the reference
  calls.
  """

  def brightness(x, value):
    return x * value if impl == 'simclrv2' else x + value

  def contrast(x, factor):
    mean = x.mean((0, 1), keepdims=True)
    return (x - mean) * factor + mean

  ops = (
      brightness,
      contrast,
      lambda x, v: tf.image.adjust_saturation(x, v).numpy(),
      lambda x, v: tf.image.adjust_hue(x, v).numpy(),
  )
  for op in order:
    image = np.clip(ops[op](image, params[op]), 0.0, 1.0)
  return image


def reference_jitter_ranges(strength, impl):
  """The reference's ranges of the brightness, contrast, saturation and hue draws: SimCLR's
  of a strength s, or torchvision ColorJitter's of four maxima (b, c, s, h) (BYOL's)."""
  if isinstance(strength, tuple):
    b, c, s, h = strength
  else:
    b = c = s = 0.8 * strength
    h = 0.2 * strength
  brightness = (max(0.0, 1 - b), 1 + b) if impl == 'simclrv2' else (-b, b)
  return [brightness, (max(0.0, 1 - c), 1 + c), (max(0.0, 1 - s), 1 + s), (-h, h)]
