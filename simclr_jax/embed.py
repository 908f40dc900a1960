r"""Embed every image of a folder with a pretrained encoder; look up nearest neighbours.

  python -m simclr_jax.embed --workdir=W --images=DIR --output=OUT [--step=N]
  python -m simclr_jax.embed --workdir=W --images=DIR --output=OUT --query=IMG_OR_DIR [--k=10]

DIR is any folder: images anywhere below it, of any size (the evaluation view: centre crop and
resize to the run's image size). If every image sits in a first-level sub-folder, those are
taken as classes. Writes OUT/embeddings.npy (float32 [N, D], h), OUT/paths.txt (N lines, in
row order), with classes OUT/labels.npy and OUT/classes.txt, and OUT/embed_info.json; files
that cannot be decoded are left out and named in OUT/skipped.txt (or, with
--skip_bad_images=false, named in an error before anything is embedded). Rows are written to a
memory-mapped file as batches finish, so a million images need no more memory than one batch.
The batch is split over this process's devices.

Several processes (the --coordinator_address, --num_processes, --process_id flags of
simclr_jax.main, or SLURM / Cloud TPU VM detection; `MODULE=simclr_jax.embed launch/local.sh`)
each embed a contiguous share of the images on their own devices into a part file in OUT;
process 0 then joins the parts in order, so OUT must be a folder every process can read and
write (a shared file system). The result equals one process's.

--query embeds the query image(s) and prints the --k nearest rows of OUT/embeddings.npy by
cosine similarity (embedding DIR first if OUT has no embeddings of this checkpoint), and plots
them in OUT/neighbours.png.
"""

import json
import os
import socket
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
import tensorflow as tf

from simclr_jax import augment
from simclr_jax import cli_errors
from simclr_jax import models
from simclr_jax.core import distributed
from simclr_jax.core import distributed_flags
from simclr_jax.core import run_config
from simclr_jax.core import workdirs
from simclr_jax.core import writers
from simclr_jax.core.sharding import create_mesh, replicated
from simclr_jax.datasets import image_folder
from simclr_jax.evaluators import features

_PROGRESS_EVERY_SECS = 10.0
_QUERY_CHUNK_ROWS = 65536  # Rows of the embeddings compared with the queries at once.


def list_images(folder: str):
  """(paths, labels or None, classes or None) of the images below `folder`, sorted.

  Labels index the first-level sub-folders when every image lies in one of them.
  """
  if not os.path.isdir(folder):
    raise ValueError(f'--images={folder!r} is not a folder; point it at a folder of images.')
  folder = os.path.abspath(folder)  # paths.txt stays valid from any working directory.
  paths = []
  for root, dirs, names in os.walk(folder, followlinks=True):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    paths += [
        os.path.join(root, n)
        for n in sorted(names)
        if not n.startswith('.') and os.path.splitext(n)[1].lower() in image_folder.IMAGE_EXTENSIONS
    ]
  if not paths:
    raise ValueError(
        f'No images below {folder} (extensions searched: {image_folder.IMAGE_EXTENSIONS}).'
    )
  tops = [os.path.relpath(p, folder).split(os.sep) for p in paths]
  if any(len(parts) == 1 for parts in tops):
    return paths, None, None
  classes = sorted({parts[0] for parts in tops})
  return paths, np.array([classes.index(parts[0]) for parts in tops], np.int32), classes


def _dataset(paths, image_size, batch_size):
  """Batches of (images [B, S, S, 3] in [0, 1], row indices [B]); undecodable files dropped."""

  def load(path, index):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image = tf.cast(image, tf.float32) / 255.0
    return augment.eval_view(image, image_size), index

  dataset = tf.data.Dataset.from_tensor_slices((paths, np.arange(len(paths), dtype=np.int64)))
  dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  dataset = dataset.ignore_errors()
  return dataset.batch(batch_size).prefetch(2)


class Encoder:
  """A run's encoder on this process's devices: images [N, S, S, 3] in [0, 1] -> h [N, D]."""

  def __init__(self, workdir: str, step: int = -1):
    config = run_config.load_config(workdirs.absolute(workdir))
    config.mode = 'report'  # Names --step in the messages of the shared restore.
    config.pretrained_workdir = workdirs.absolute(workdir)
    self.config = config
    # This process's devices only: with several processes each embeds its own share.
    self.mesh = create_mesh(jax.local_devices())
    self.model = models.create_model(config.model, image_size=config.image_size)
    variables, self.step = features.restore_encoder_variables(
        config, self.model, workdirs.absolute(workdir), step
    )
    self.variables = jax.device_put(variables, replicated(self.mesh))
    self._fn = features.make_feature_fn(self.model, self.mesh, 'pretrained')

  def __call__(self, images):
    return features.features_of_array(self._fn, self.variables, images, self.mesh.size)


def _share(num_images: int, process: int, num_processes: int) -> slice:
  """The contiguous rows process `process` of `num_processes` embeds."""
  return slice(num_images * process // num_processes, num_images * (process + 1) // num_processes)


def _embed_share(encoder, paths, part, batch_size, total):
  """Embeds `paths` into the .npy file `part` (a row per path; rows of undecodable files stay
  zero); returns (decoded mask, feature dimension or None when nothing decoded)."""
  done = np.zeros(len(paths), bool)
  table, feature_dim = None, None
  start = last_log = time.perf_counter()
  for images, indices in _dataset(paths, encoder.config.image_size, batch_size):
    h = encoder(images.numpy())
    if table is None:
      feature_dim = h.shape[1]
      workdirs.require_free_space(
          os.path.dirname(part), 4 * feature_dim * len(paths), 'the embeddings'
      )
      table = np.lib.format.open_memmap(
          part, mode='w+', dtype=np.float32, shape=(len(paths), feature_dim)
      )
    table[indices.numpy()] = h
    done[indices.numpy()] = True
    if time.perf_counter() - last_log > _PROGRESS_EVERY_SECS:
      last_log = time.perf_counter()
      rate = done.sum() / (last_log - start)
      share = '' if len(paths) == total else f" (this process's share of {total})"
      logging.info(
          'Embedded %d of %d images%s, %.0f/s, %.0f s to go.',
          done.sum(),
          len(paths),
          share,
          rate,
          (len(paths) - done.sum()) / rate,
      )
  if table is not None:
    table.flush()
    del table
  return done, feature_dim


def _join_shares(shares, feature_dim, target):
  """Writes the decoded rows of every share's part, in order, to the .npy file `target`;
  returns the decoded mask of all images. `shares`: [{'part', 'done', 'feature_dim'}]."""
  for process, share in enumerate(shares):
    for name in ('part', 'done'):
      if share[name] and not os.path.exists(share[name]):
        raise ValueError(
            f'Process 0 cannot see {share[name]}, which process {process} wrote: --output must '
            'be a folder every process can read (a shared file system).'
        )
  done = np.concatenate([np.load(s['done']) if s['done'] else np.zeros(0, bool) for s in shares])
  if len(shares) == 1 and done.all():
    os.replace(shares[0]['part'], target)  # Nothing to join.
    return done
  workdirs.require_free_space(
      os.path.dirname(target), 4 * feature_dim * int(done.sum()), 'the embeddings'
  )
  joined = np.lib.format.open_memmap(
      target, mode='w+', dtype=np.float32, shape=(int(done.sum()), feature_dim)
  )
  row = 0
  for share in shares:
    if not share['part']:
      continue
    part = np.load(share['part'], mmap_mode='r')
    kept = np.flatnonzero(np.load(share['done']))
    for s in range(0, len(kept), _QUERY_CHUNK_ROWS):  # A chunk at a time: any size fits.
      rows = kept[s : s + _QUERY_CHUNK_ROWS]
      joined[row : row + len(rows)] = part[rows]
      row += len(rows)
  joined.flush()
  return done


def embed_folder(encoder, folder, output, batch_size=0, skip_bad_images=True) -> dict:
  """Embeds every image below `folder` into OUTPUT (see the module docstring); returns the
  summary written to OUTPUT/embed_info.json. With several processes, each embeds its share
  and process 0 joins them; every process returns the summary."""
  paths, labels, classes = list_images(folder)
  process, num_processes = jax.process_index(), jax.process_count()
  mine = paths[_share(len(paths), process, num_processes)]
  if not skip_bad_images:
    bad = image_folder.find_unreadable_images(mine)
    texts = distributed.all_gather_text('embed/bad_images', json.dumps(bad))
    bad = [tuple(b) for text in texts for b in json.loads(text)]
    if bad:
      raise ValueError(
          f'{len(bad)} of the {len(paths)} images below {folder} cannot be decoded: '
          f'{image_folder.listed(bad)}. Remove them, or pass --skip_bad_images=true.'
      )
  batch_size = batch_size or encoder.config.eval.batch_size
  os.makedirs(output, exist_ok=True)
  start = time.perf_counter()
  target = os.path.join(output, 'embeddings.npy')
  # This process's own files: two runs at once cannot mix.
  stem = f'{target}.part{process}.{socket.gethostname()}.{os.getpid()}'
  # Every process's names, before any writes (the gather waits for all): others are stale.
  ours = [os.path.basename(s) for s in distributed.all_gather_text('embed/stems', stem)]
  stale = process == 0 and sorted(
      n
      for n in os.listdir(output)
      if n.startswith('embeddings.npy.') and not any(n.startswith(o + '.') for o in ours)
  )
  if stale:  # A killed run's parts: the finished files were never touched.
    logging.warning(
        '%s holds %d part files of an embedding run that did not finish (e.g. %s); unless '
        'another run is writing there now, delete them to free their space.',
        output,
        len(stale),
        stale[0],
    )
  share = {'part': None, 'done': None, 'feature_dim': None}
  try:
    if mine:
      done, feature_dim = _embed_share(encoder, mine, stem + '.npy', batch_size, len(paths))
      np.save(stem + '.done.npy', done)
      share = {
          'part': stem + '.npy' if feature_dim else None,
          'done': stem + '.done.npy',
          'feature_dim': feature_dim,
      }
  except (OSError, ValueError) as e:
    if num_processes == 1:
      raise
    share = {'error': f'process {process}: {e}'}  # Said to every process: all stop with it.
  shares = [json.loads(t) for t in distributed.all_gather_text('embed/shares', json.dumps(share))]
  joined = ''
  try:
    if process == 0 and not any('error' in s for s in shares):
      dims = {s['feature_dim'] for s in shares if s['feature_dim']}
      if not dims:
        raise ValueError(f'None of the {len(paths)} images below {folder} could be decoded.')
      (feature_dim,) = dims
      done = _join_shares(shares, feature_dim, f'{target}.tmp{os.getpid()}.npy')
      os.replace(f'{target}.tmp{os.getpid()}.npy', target)
      summary = _write_listing(encoder, folder, output, paths, labels, classes, done)
      summary.update(feature_dim=feature_dim, num_processes=num_processes)
      summary['wall_time_sec'] = time.perf_counter() - start
      workdirs.write_atomically(
          os.path.join(output, 'embed_info.json'), json.dumps(summary, indent=2)
      )
  except (OSError, ValueError) as e:
    if num_processes == 1:
      raise
    joined = f'process 0: {e}'
  finally:
    # Once process 0 is done with them (the gather waits for it), each removes its own parts.
    joined = distributed.all_gather_text('embed/joined', joined)[0]
    for path in (stem + '.npy', stem + '.done.npy', f'{target}.tmp{os.getpid()}.npy'):
      if os.path.exists(path):
        os.remove(path)
  errors = [s['error'] for s in shares if 'error' in s] + ([joined] if joined else [])
  if errors:
    raise ValueError(errors[0])
  with open(os.path.join(output, 'embed_info.json')) as f:
    return json.load(f)


def _write_listing(encoder, folder, output, paths, labels, classes, done) -> dict:
  """paths.txt, skipped.txt and the labels of the embedded rows; returns their summary."""
  kept = np.flatnonzero(done)
  skipped = [paths[i] for i in np.flatnonzero(~done)]
  if skipped:
    logging.warning('Skipped %d images that cannot be decoded, e.g. %s.', len(skipped), skipped[0])
  workdirs.write_atomically(
      os.path.join(output, 'paths.txt'), ''.join(paths[i] + '\n' for i in kept)
  )
  workdirs.write_atomically(os.path.join(output, 'skipped.txt'), ''.join(p + '\n' for p in skipped))
  if labels is not None:
    np.save(os.path.join(output, 'labels.npy'), labels[kept])
    workdirs.write_atomically(
        os.path.join(output, 'classes.txt'), ''.join(c + '\n' for c in classes)
    )
  return {
      'workdir': encoder.config.pretrained_workdir,
      'step': encoder.step,
      'images': os.path.abspath(folder),
      'num_embedded': int(len(kept)),
      'num_skipped': len(skipped),
      'classes': classes,
  }


def nearest(encoder, output, query, k):
  """[(query path, [(row path, cosine similarity)] * k)] against OUTPUT/embeddings.npy."""
  query_paths = list_images(query)[0] if os.path.isdir(query) else [query]
  images, indices = [], []
  for batch, index in _dataset(query_paths, encoder.config.image_size, 64):
    images.append(batch.numpy())
    indices += list(index.numpy())
  if len(indices) < len(query_paths):
    missing = sorted(set(range(len(query_paths))) - set(indices))
    raise ValueError(f'Query images that cannot be decoded: {[query_paths[i] for i in missing]}.')
  q = encoder(np.concatenate(images))
  q = q / np.linalg.norm(q, axis=1, keepdims=True)
  table = np.load(os.path.join(output, 'embeddings.npy'), mmap_mode='r')
  with open(os.path.join(output, 'paths.txt')) as f:
    paths = f.read().splitlines()
  k = min(k, len(paths))
  best_scores = np.full((len(q), 0), -np.inf, np.float32)
  best_rows = np.zeros((len(q), 0), np.int64)
  for s in range(0, len(table), _QUERY_CHUNK_ROWS):
    chunk = np.asarray(table[s : s + _QUERY_CHUNK_ROWS])
    scores = q @ (chunk / np.linalg.norm(chunk, axis=1, keepdims=True)).T
    scores = np.concatenate([best_scores, scores], 1)
    rows = np.arange(s, s + len(chunk))
    rows = np.concatenate([best_rows, np.broadcast_to(rows, (len(q), len(chunk)))], 1)
    top = np.argsort(-scores, axis=1, kind='stable')[:, :k]
    best_scores = np.take_along_axis(scores, top, 1)
    best_rows = np.take_along_axis(rows, top, 1)
  return [
      (
          query_paths[indices[i]],
          [(paths[r], float(v)) for r, v in zip(best_rows[i], best_scores[i])],
      )
      for i in range(len(q))
  ]


def neighbours_figure(results, path, max_queries=8):
  """Each query (left) and its neighbours with their similarities, saved to `path`."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  results = results[:max_queries]
  cols = 1 + len(results[0][1])
  fig, axes = plt.subplots(
      len(results), cols, figsize=(1.4 * cols, 1.5 * len(results)), squeeze=False
  )
  for row, (query, found) in zip(axes, results):
    for ax, (image_path, title) in zip(
        row, [(query, 'query')] + [(p, f'{s:.3f}') for p, s in found]
    ):
      image = tf.io.decode_image(tf.io.read_file(image_path), channels=3, expand_animations=False)
      ax.imshow(image.numpy())
      ax.set_title(title, fontsize=7)
      ax.axis('off')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def define_flags(flag_values=flags.FLAGS):
  define = dict(flag_values=flag_values)
  flags.DEFINE_string(
      'workdir', None, 'Pretraining workdir: checkpoints/ and config.json.', required=True, **define
  )
  flags.DEFINE_string(
      'images', None, 'Folder of images to embed (any layout, any sizes).', **define
  )
  flags.DEFINE_string(
      'output', None, 'Folder for embeddings.npy, paths.txt, ...', required=True, **define
  )
  flags.DEFINE_integer('step', -1, 'Checkpoint step (-1: the latest).', **define)
  flags.DEFINE_integer(
      'batch_size', 0, "Images per batch (0: the run's eval.batch_size).", **define
  )
  flags.DEFINE_bool(
      'skip_bad_images', True, 'Leave out (and list) files that cannot be decoded.', **define
  )
  flags.DEFINE_string('query', '', 'An image or folder of images to look up in OUTPUT.', **define)
  flags.DEFINE_integer('k', 10, 'Neighbours per query.', **define)
  flags.DEFINE_bool('verbose', False, 'Show the traceback of known errors.', **define)
  distributed_flags.define(flag_values)


def _embedded_here(output, encoder):
  info = os.path.join(output, 'embed_info.json')
  if not os.path.exists(info) or not os.path.exists(os.path.join(output, 'embeddings.npy')):
    return False
  with open(info) as f:
    return json.load(f)['step'] == encoder.step


def main(argv, flag_values=flags.FLAGS):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  writers.quiet_orbax_logs()
  f = flag_values
  with cli_errors.as_sentences(f.verbose):
    if not f.images and not f.query:
      raise ValueError('Pass --images=DIR to embed, and/or --query=IMAGE_OR_DIR to look up.')
    distributed_flags.initialize(f)
    encoder = Encoder(f.workdir, f.step)
    if f.images and not (f.query and _embedded_here(f.output, encoder)):
      summary = embed_folder(encoder, f.images, f.output, f.batch_size, f.skip_bad_images)
      if jax.process_index() == 0:
        print(
            f'Embedded {summary["num_embedded"]} images into {f.output}/embeddings.npy '
            f'({summary["num_skipped"]} skipped).'
        )
    if f.query and jax.process_index() == 0:  # Process 0 answers for a multi-process run.
      if not _embedded_here(f.output, encoder):
        raise ValueError(f'{f.output} holds no embeddings of this checkpoint; add --images=DIR.')
      results = nearest(encoder, f.output, f.query, f.k)
      for query, found in results:
        print(f'{query}:')
        for rank, (path, score) in enumerate(found, 1):
          print(f'  {rank:3d}. {score:.4f}  {path}')
      neighbours_figure(results, os.path.join(f.output, 'neighbours.png'))
      print(f'Figure: {f.output}/neighbours.png')


if __name__ == '__main__':
  define_flags()
  app.run(main)
