"""Pictures of a pretrained encoder: augmentations, t-SNE, nearest neighbours, confusion matrix.

Each function does one job and takes plain numpy arrays. The plots return matplotlib Figures
built without pyplot (no global state, nothing shown): `fig.savefig(path)` renders them with
Agg, and a notebook displays them as they are. The report command
(`python -m simclr_jax.report`), the notebook and the pretraining TensorBoard summary all use
these functions.
"""

import matplotlib
from matplotlib import figure as mpl_figure
from matplotlib import patches
import numpy as np
from sklearn import manifold

DPI = 100
CELL_INCHES = 1.2  # Side of one image cell in the image grids.
TSNE_INCHES = (8.0, 6.0)
CONFUSION_INCHES = (7.0, 6.0)
WRONG_COLOUR = '#ff0000'  # Outline of a neighbour of another class than its query.
# Legends and per-cell annotations become unreadable beyond these many classes.
_MAX_LEGEND_CLASSES = 20
_MAX_ANNOTATED_CLASSES = 20


def _image_axes(fig, rows: int, cols: int):
  """A rows x cols grid of tick-free axes for images (spines kept for outlines)."""
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
      spine.set_visible(False)
  return axes


def augmentation_plot(images, views) -> mpl_figure.Figure:
  """Originals [N, S, S, 3] (first column) and pairs of their views [N, 2P, S, S, 3].

  (1 + 2P) x N cells of CELL_INCHES at DPI.
  """
  n, v = np.shape(views)[:2]
  fig = mpl_figure.Figure(
      figsize=(CELL_INCHES * (1 + v), CELL_INCHES * n), dpi=DPI, layout='constrained'
  )
  axes = _image_axes(fig, n, 1 + v)
  for i in range(n):
    axes[i, 0].imshow(np.clip(images[i], 0, 1))
    for j in range(v):
      axes[i, 1 + j].imshow(np.clip(views[i, j], 0, 1))
  axes[0, 0].set_title('original', fontsize=9)
  for j in range(v):
    axes[0, 1 + j].set_title(f'view {j // 2 + 1}{"ab"[j % 2]}', fontsize=9)
  return fig


def tsne_embedding(features, *, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
  """2-D t-SNE [N, 2] of L2-normalised features [N, D].

  Normalised first, so that distances follow cosine similarity, the geometry the contrastive
  loss and kNN use. The perplexity is capped at (N - 1) / 3 for small N (scikit-learn needs
  it below N); all 1000 iterations run.
  """
  x = np.asarray(features, np.float64)
  if len(x) < 4:
    raise ValueError(f't-SNE needs at least 4 points; got {len(x)}.')
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  tsne = manifold.TSNE(
      n_components=2,
      perplexity=min(perplexity, (len(x) - 1) / 3),
      init='pca',
      learning_rate='auto',
      random_state=seed,
  )
  return tsne.fit_transform(x).astype(np.float32)


def class_colours(num_classes: int):
  """One RGBA colour per class: tab10 / tab20 when they suffice, else evenly spaced hues."""
  if num_classes <= 10:
    return matplotlib.colormaps['tab10'](np.arange(num_classes))
  if num_classes <= 20:
    return matplotlib.colormaps['tab20'](np.arange(num_classes))
  return matplotlib.colormaps['hsv'](np.linspace(0, 1, num_classes, endpoint=False))


def tsne_plot(
    points, labels, class_names, title: str = 't-SNE of the representation h'
) -> mpl_figure.Figure:
  """Scatter of 2-D points [N, 2] coloured by class, with a legend (TSNE_INCHES at DPI)."""
  points, labels = np.asarray(points), np.asarray(labels)
  colours = class_colours(len(class_names))
  fig = mpl_figure.Figure(figsize=TSNE_INCHES, dpi=DPI, layout='constrained')
  ax = fig.subplots()
  for c, name in enumerate(class_names):
    members = labels == c
    if members.any():
      ax.scatter(
          points[members, 0],
          points[members, 1],
          s=12,
          color=colours[c],
          label=name,
          alpha=0.8,
          linewidths=0,
      )
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(f'{title} ({len(points)} examples)')
  if len(class_names) <= _MAX_LEGEND_CLASSES:
    ax.legend(loc='center left', bbox_to_anchor=(1.0, 0.5), frameon=False, markerscale=1.5)
  return fig


def neighbours_plot(
    query_images,
    neighbour_images,
    neighbour_labels,
    class_names,
    query_labels=None,
    similarities=None,
    query_titles=None,
) -> mpl_figure.Figure:
  """Each query (first column) and its k nearest training images, most similar first.

  Args:
    query_images: [Q, S, S, 3].
    neighbour_images: [Q, k, S, S, 3].
    neighbour_labels: [Q, k] class indices.
    class_names: names of the classes.
    query_labels: [Q] classes of the queries, or None (e.g. the user's own images): with
      labels, neighbours of another class are outlined in red (WRONG_COLOUR).
    similarities: [Q, k] cosine similarities, shown under the class names.
    query_titles: [Q] titles of the queries (default: their class, or 'query').

  Returns:
    A figure of (1 + k) x Q cells of CELL_INCHES at DPI.
  """
  q, k = np.shape(neighbour_labels)
  fig = mpl_figure.Figure(
      figsize=(CELL_INCHES * (1 + k), CELL_INCHES * q), dpi=DPI, layout='constrained'
  )
  axes = _image_axes(fig, q, 1 + k)
  for i in range(q):
    axes[i, 0].imshow(np.clip(query_images[i], 0, 1))
    if query_titles is not None:
      title = query_titles[i]
    else:
      title = 'query' if query_labels is None else class_names[query_labels[i]]
    axes[i, 0].set_title(title, fontsize=8, fontweight='bold')
    for j in range(k):
      ax = axes[i, 1 + j]
      ax.imshow(np.clip(neighbour_images[i, j], 0, 1))
      label = int(neighbour_labels[i, j])
      title = class_names[label]
      if similarities is not None:
        title += f'\n{similarities[i, j]:.2f}'
      ax.set_title(title, fontsize=7)
      if query_labels is not None and label != query_labels[i]:
        # A rectangle on top of the image: spines would sit under the image's edge pixels.
        ax.add_patch(
            patches.Rectangle(
                (0, 0),
                1,
                1,
                transform=ax.transAxes,
                fill=False,
                edgecolor=WRONG_COLOUR,
                linewidth=4,
                clip_on=False,
            )
        )
  return fig


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
  """Counts [C, C] of examples of true class i (row) predicted as class j (column)."""
  labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
  if labels.shape != predictions.shape:
    raise ValueError(f'labels {labels.shape} and predictions {predictions.shape} differ.')
  for name, x in (('labels', labels), ('predictions', predictions)):
    if x.size and (x.min() < 0 or x.max() >= num_classes):
      raise ValueError(f'{name} must lie in [0, {num_classes}).')
  return np.bincount(
      labels * num_classes + predictions, minlength=num_classes * num_classes
  ).reshape(num_classes, num_classes)


def confusion_plot(matrix, class_names, title: str = 'Linear probe') -> mpl_figure.Figure:
  """The confusion matrix as an image, shaded by row fraction and annotated with counts.

  CONFUSION_INCHES at DPI; counts and class names are written for up to 20 classes.
  """
  matrix = np.asarray(matrix)
  num_classes = len(matrix)
  rows = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
  accuracy = np.trace(matrix) / max(matrix.sum(), 1)
  fig = mpl_figure.Figure(figsize=CONFUSION_INCHES, dpi=DPI, layout='constrained')
  ax = fig.subplots()
  shown = ax.imshow(matrix / rows, cmap='Blues', vmin=0, vmax=1)
  fig.colorbar(shown, ax=ax, fraction=0.046, label='fraction of the true class')
  if num_classes <= _MAX_ANNOTATED_CLASSES:
    ticks = np.arange(num_classes)
    ax.set_xticks(ticks, class_names, rotation=45, ha='right', fontsize=8)
    ax.set_yticks(ticks, class_names, fontsize=8)
    for i in range(num_classes):
      for j in range(num_classes):
        if matrix[i, j]:
          dark = matrix[i, j] / rows[i, 0] > 0.5
          ax.text(
              j,
              i,
              str(matrix[i, j]),
              ha='center',
              va='center',
              fontsize=7,
              color='white' if dark else 'black',
          )
  ax.set_xlabel('predicted class')
  ax.set_ylabel('true class')
  ax.set_title(f'{title}: top-1 {100 * accuracy:.1f}% on {matrix.sum()} examples')
  return fig
