"""Metric writers: clu's TensorBoard + log writers, plus a JSON-lines file for scripts."""

import json
import logging as std_logging
import os
from typing import Any
from collections.abc import Mapping

from absl import logging
import jax
from clu import metric_writers
import tensorflow as tf

from simclr_jax.core import workdirs


class JsonlWriter(metric_writers.MetricWriter):
  """Appends each `write_scalars` call to a file as one JSON object with a `step` key."""

  def __init__(self, path: str):
    self._path = path

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    record = {'step': int(step), **{k: float(v) for k, v in scalars.items()}}
    with tf.io.gfile.GFile(self._path, 'a') as f:
      f.write(json.dumps(record) + '\n')

  # Only scalars go to the JSON-lines file; everything else is TensorBoard's business.
  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    pass

  def close(self):
    pass


def _step_of(line: str) -> int | None:
  try:
    return int(json.loads(line)['step'])
  except (ValueError, KeyError, TypeError):
    return None


def drop_records_after(path: str, step: int):
  """Removes the lines of a metrics.jsonl logged after `step` (a resumed run redoes them),
  and lines that do not parse (a kill mid-write cuts the last one short)."""
  if not tf.io.gfile.exists(path):
    return
  with tf.io.gfile.GFile(path) as f:
    lines = [line for line in f if line.strip()]
  steps = [_step_of(line) for line in lines]
  torn = steps.count(None)
  if torn:
    logging.warning(
        'Dropped %d unreadable line(s) of %s, as a kill mid-write leaves them.', torn, path
    )
  workdirs.write_atomically(
      path,
      ''.join(
          line if line.endswith('\n') else line + '\n'
          for line, s in zip(lines, steps)
          if s is not None and s <= step
      ),
  )


def create_writer(workdir: str, start_step: int = 0) -> metric_writers.MetricWriter:
  """TensorBoard + log + WORKDIR/metrics.jsonl on process 0; the log alone elsewhere.

  Resuming at `start_step`, metrics.jsonl keeps only the records up to that step, so that it
  reads like one uninterrupted run.
  """
  if jax.process_index() > 0:
    return metric_writers.create_default_writer(workdir, just_logging=True)
  path = os.path.join(workdir, 'metrics.jsonl')
  drop_records_after(path, start_step)
  return metric_writers.MultiWriter(
      [metric_writers.create_default_writer(workdir), JsonlWriter(path)]
  )


# Orbax warnings that every normal read-only restore (evaluation, the report) logs: reading
# another run's checkpoints read-only, and restoring them as saved, are what we mean to do.
_EXPECTED_ORBAX_WARNINGS = (
    'read_only=True, setting save_interval_steps=0',
    'Given directory is read only',
    'was found in the checkpoint, but could not be restored',
)


def _shown(record) -> bool:
  if '/orbax/' not in record.pathname:
    return True
  if record.levelno < std_logging.WARNING:
    return False
  return not any(text in record.getMessage() for text in _EXPECTED_ORBAX_WARNINGS)


def quiet_orbax_logs():
  """Drops Orbax's INFO lines (several per save or restore) and the warnings of normal
  read-only restores from the absl log; keeps its other warnings."""
  logging.get_absl_handler().addFilter(_shown)
