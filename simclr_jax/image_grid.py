"""Originals and their augmented views in one image (numpy only: pretraining writes it to
TensorBoard without loading matplotlib)."""

import numpy as np


def augmentation_grid(images, views, pad: int = 2) -> np.ndarray:
  """One float32 image of originals and their views, white gaps between the cells.

  Args:
    images: [N, S, S, 3] originals in [0, 1].
    views: [N, V, S, S, 3] augmented views of each original.
    pad: gap in pixels.

  Returns:
    [N * (S + pad) + pad, (1 + V) * (S + pad) + pad, 3]: row i is image i then its views.
  """
  images, views = np.asarray(images, np.float32), np.asarray(views, np.float32)
  n, v, side = views.shape[0], views.shape[1], views.shape[2]
  if images.shape != (n, side, side, 3) or views.shape[3:] != (side, 3):
    raise ValueError(
        f'images must be [N, S, S, 3] and views [N, V, S, S, 3]; got '
        f'{images.shape} and {views.shape}.'
    )
  cells = np.concatenate([images[:, None], views], axis=1)  # [N, 1 + V, S, S, 3]
  step = side + pad
  grid = np.ones((n * step + pad, (1 + v) * step + pad, 3), np.float32)
  for i in range(n):
    for j in range(1 + v):
      grid[pad + i * step : (i + 1) * step, pad + j * step : (j + 1) * step] = cells[i, j]
  return np.clip(grid, 0.0, 1.0)
