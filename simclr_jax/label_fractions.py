"""Class-balanced label fractions for semi-supervised fine-tuning (SimCLR: 1% and 10%).

Each class's examples are ranked by a permutation seeded by (seed, class) alone, and a fraction
f keeps the first round(f * n_class) of them (at least one). The subsets are therefore
class-balanced, the same for a seed on every machine, and nested: the 1% subset lies inside
the 10% one, which lies inside the full set.
"""

import numpy as np

# Mixed into the permutation seed so it differs from other uses of the same config seed.
_SUBSET_STREAM = 4


def class_balanced_subset(labels, fraction: float, seed: int) -> np.ndarray:
  """Sorted indices into `labels` of the class-balanced subset holding `fraction` of them."""
  labels = np.asarray(labels)
  if not 0 < fraction <= 1:
    raise ValueError(f'label fraction {fraction} must be in (0, 1] (e.g. 0.01, 0.1 or 1.0).')
  if fraction == 1:
    return np.arange(len(labels))
  if labels.size and labels.min() < 0:
    raise ValueError(
        'The dataset has unlabelled examples (label -1); label fractions need '
        'labels for every example.'
    )
  keep = []
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    ranked = np.random.default_rng([seed, _SUBSET_STREAM, int(label)]).permutation(members)
    keep.append(ranked[: max(1, int(round(fraction * len(members))))])
  return np.sort(np.concatenate(keep))
