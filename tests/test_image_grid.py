"""image_grid.augmentation_grid against its layout, cell by cell."""

import numpy as np

from simclr_jax import image_grid


def test_augmentation_grid_layout():
  rng = np.random.default_rng(0)
  images, views = rng.uniform(size=(3, 8, 8, 3)), rng.uniform(size=(3, 4, 8, 8, 3))
  grid = image_grid.augmentation_grid(images, views, pad=2)
  assert grid.shape == (3 * 10 + 2, 5 * 10 + 2, 3)
  np.testing.assert_allclose(grid[12:20, 2:10], images[1], rtol=1e-6)  # Row 1, column 0.
  np.testing.assert_allclose(grid[22:30, 42:50], views[2, 3], rtol=1e-6)  # Row 2, column 4.
  assert np.all(grid[:2] == 1) and np.all(grid[:, 10:12] == 1)  # White gaps.
