r"""Export a pretraining run's encoder (and projection head) for use without this codebase.

  python -m simclr_jax.export --workdir=W --format=npz --output=PATH [--step=N]

Formats:
- npz: one numpy archive (np.load, no pickle): every array of the encoder and head under its
  '/'-joined path ('params/encoder/stem_conv/kernel', 'batch_stats/encoder/...'), the run's
  config as JSON in '__config__' and the checkpoint step in '__step__'.
- msgpack: the same tree as flax.serialization's msgpack ({'params', 'batch_stats', 'config',
  'step'}), for JAX users without Orbax.
- torch: the ResNet encoder as a torchvision state_dict in safetensors (PATH.safetensors), for
  torchvision.models.resnetNN; the model card holds the lines that build and load it
  (export_torch.py: the CIFAR stem, TF's max-pool padding and the reference shortcut layout
  change torchvision's module in a few lines). Width 1 only; no projection head.
- savedmodel: a TensorFlow SavedModel directory (through jax2tf) whose 'serving_default'
  signature takes uint8 images [N, S, S, 3] of the run's image size S, any N, and returns
  {'h': representations, 'z': projections}; the weights are its variables.
`load` reads either back as (variables, config); inference_model(config) rebuilds the module
they belong to (the run's method's).

Beside PATH it writes PATH.md, a model card: the architecture, the data and recipe of the run,
its steps, and the evaluation results found in W. Nothing in W is changed; PATH is written
atomically and not overwritten unless --overwrite.
"""

import io
import json
import logging as std_logging
import os
import shutil

from absl import app
from absl import flags
import flax.serialization
import jax
import ml_collections
import numpy as np
import safetensors.numpy

from simclr_jax import cli_errors
from simclr_jax import export_torch
from simclr_jax.core import checkpoints
from simclr_jax.core import run_config
from simclr_jax.core import workdirs
from simclr_jax.core import writers

FORMATS = ('npz', 'msgpack', 'torch', 'savedmodel')
# The file ending --output needs, by format (savedmodel: a directory).
SUFFIXES = {'npz': '.npz', 'msgpack': '.msgpack', 'torch': '.safetensors'}
# The parts of the model a user of the encoder needs; the probe depends on the run's labels.
EXPORTED = ('encoder', 'head')


def exported_variables(restored) -> dict:
  """{'params': {...}, 'batch_stats': {...}} of the EXPORTED modules, as numpy arrays."""
  return {
      collection: {
          name: jax.tree.map(np.asarray, tree)
          for name, tree in restored.get(collection, {}).items()
          if name in EXPORTED
      }
      for collection in ('params', 'batch_stats')
  }


def _flatten(tree, prefix=''):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flatten(value, f'{prefix}{key}/')
    else:
      yield f'{prefix}{key}', value


def _unflatten(flat):
  tree = {}
  for path, value in flat.items():
    *parents, leaf = path.split('/')
    node = tree
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return tree


def serialize(variables, config, step: int, fmt: str) -> bytes:
  """The bytes of an export in `fmt` (see the module docstring)."""
  config_json = config.to_json()
  if fmt == 'torch':
    tensors = export_torch.state_dict(variables)
    return safetensors.numpy.save(tensors, metadata={'config': config_json, 'step': str(step)})
  if fmt == 'npz':
    buffer = io.BytesIO()
    arrays = dict(_flatten(variables))
    np.savez(buffer, __config__=np.array(config_json), __step__=np.array(step), **arrays)
    return buffer.getvalue()
  return flax.serialization.msgpack_serialize({**variables, 'config': config_json, 'step': step})


def inference_model(config):
  """The Flax module of a run's method (config.json's), in float32 with XLA's convolutions:
  model.apply(variables, images, train=False, method='project') gives {'h', 'z'} of images
  in [0, 1] (the encoder's representation and the projection head's output)."""
  from simclr_jax import methods  # pylint: disable=g-import-not-at-top

  config = ml_collections.ConfigDict(config.to_dict())
  config.dtype, config.remat = 'float32', False
  # XLA's convolutions: the CPU patch matmuls split the batch in Python, which a batch of
  # unknown size (SavedModel) cannot; both compute the same (tests/test_conv.py).
  if 'conv_impl' in config.model:
    config.model.conv_impl = 'xla'
  if 'method' not in config:  # A config.json saved before config.method existed.
    config.method = 'simclr'
  return methods.get(config).create_model(num_classes=0)


def write_savedmodel(variables, config, directory: str):
  """The SavedModel of `savedmodel` (see the module docstring) in `directory`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top

  model = inference_model(config)

  def serve_fn(variables, images):
    out = model.apply(variables, images.astype(np.float32) / 255.0, train=False, method='project')
    return {'h': out['h'], 'z': out['z']}

  size = config.image_size
  converted = jax2tf.convert(
      serve_fn, polymorphic_shapes=[None, f'(b, {size}, {size}, 3)'], with_gradient=False
  )
  module = tf.Module()
  module.variables_tree = tf.nest.map_structure(tf.Variable, variables)

  @tf.function(
      input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name='images')],
      autograph=False,
  )
  def serve(images):
    return converted(module.variables_tree, images)

  module.serve = serve
  # tf.saved_model.save raises the absl logger's level to WARNING, silencing the caller's INFO
  # lines (progress, results) for good; it gets its level back.
  absl_logger = std_logging.getLogger('absl')
  level = absl_logger.level
  try:
    tf.saved_model.save(module, directory, signatures={'serving_default': serve})
  finally:
    absl_logger.setLevel(level)


def load(path: str):
  """(variables, config, step) of an export (npz or msgpack, by the file's extension)."""
  if path.endswith('.npz'):
    with np.load(path) as archive:
      flat = {k: archive[k] for k in archive.files}
    config_json, step = str(flat.pop('__config__')), int(flat.pop('__step__'))
    variables = _unflatten(flat)
  else:
    with open(path, 'rb') as f:
      tree = flax.serialization.msgpack_restore(f.read())
    config_json, step = tree.pop('config'), int(tree.pop('step'))
    variables = tree
  variables.setdefault('batch_stats', {})
  return variables, ml_collections.ConfigDict(json.loads(config_json)), step


def _evaluations(workdir: str) -> list[str]:
  """Lines of the model card on what W records about the encoder's quality."""
  lines = []
  metrics_path = workdirs.path(workdir, 'metrics.jsonl')
  if os.path.exists(metrics_path):
    with open(metrics_path) as f:
      records = [json.loads(line) for line in f if line.strip()]
    for name in ('contrastive_loss', 'probe_accuracy', 'knn_top1'):
      found = [r for r in records if name in r]
      if found:
        lines.append(f'- {name} at step {found[-1]["step"]}: {found[-1][name]:.4f} (metrics.jsonl)')
  report_path = workdirs.path(workdir, os.path.join('report', 'report.json'))
  if os.path.exists(report_path):
    with open(report_path) as f:
      report = json.load(f)
    for protocol in ('linear', 'knn'):
      if protocol in report:
        lines.append(
            f'- {protocol} top-1 (report, step {report.get("step")}): '
            f'{100 * report[protocol]["top1"]:.2f}%'
        )
  return lines or ['- none found in the workdir (run simclr_jax.report or an evaluation)']


def model_card(workdir: str, variables, config, step: int, fmt: str, output: str) -> str:
  """The Markdown model card written beside an export."""
  m = config.model
  counts = {
      name: sum(int(np.size(x)) for x in jax.tree.leaves(tree))
      for name, tree in variables['params'].items()
      if fmt != 'torch' or name == 'encoder'  # The torch export holds the encoder alone.
  }
  architecture = f'{m.name}, width multiplier {m.width_multiplier}'
  if m.name.startswith('vit'):
    architecture += f', patch {m.patch_size}, pool {m.pool}'
  if fmt == 'torch':
    loader = export_torch.loading_lines(config, os.path.basename(output))
  elif fmt == 'savedmodel':
    loader = (
        'import tensorflow as tf\n'
        f"serve = tf.saved_model.load('{os.path.basename(output)}').signatures['serving_default']\n"
        f'h = serve(images=uint8_images)["h"]  # [N, {config.image_size}, {config.image_size}, 3]'
    )
  else:
    loader = (
        'from simclr_jax import export\n'
        f"variables, config, step = export.load('{os.path.basename(output)}')\n"
        'model = export.inference_model(config)\n'
        "h = model.apply(variables, images, train=False, method='encode')  # [N, S, S, 3] in [0, 1]"
    )
  lines = [
      f'# {m.name} encoder, {config.get("method", "simclr")} pretraining, step {step}',
      '',
      f'- file: `{os.path.basename(output)}` ({fmt}); exported from `{workdir}`',
      f'- architecture: {architecture}; image size {config.image_size}',
      '- parameters: ' + ', '.join(f'{name} {count:,}' for name, count in counts.items()),
      f'- method: {config.get("method", "simclr")}; data: {config.dataset} '
      f'(split {config.train_split})',
      f'- recipe: batch {config.batch_size}, optimizer {config.optimizer}, base lr '
      f'{config.learning_rate} ({config.lr_scaling}), weight decay {config.weight_decay}, '
      f'temperature {config.temperature}, augmentation policy '
      f'{config.augment.get("policy", "simclr")}, seed {config.seed}',
      '',
      '## Evaluations found in the workdir',
      *_evaluations(workdir),
      '',
      '## Loading',
      '```python',
      loader,
      '```',
      '',
  ]
  return '\n'.join(lines)


def export(workdir: str, output: str, fmt: str, step: int = -1, overwrite: bool = False) -> dict:
  """Writes the export and its model card; returns {'output', 'model_card', 'step'}."""
  if fmt not in FORMATS:
    raise ValueError(f'--format={fmt!r} is not known; use one of {", ".join(FORMATS)}.')
  if fmt in SUFFIXES and not output.endswith(SUFFIXES[fmt]):
    raise ValueError(f'--output={output!r} must end with {SUFFIXES[fmt]} for --format={fmt}.')
  if os.path.exists(output) and not overwrite:
    raise ValueError(f'{output} exists; pass --overwrite to replace it, or another --output.')
  workdir = workdirs.absolute(workdir)
  manager = checkpoints.read_only_manager(workdir)
  steps = manager.all_steps()
  if not steps:
    raise ValueError(
        f'No checkpoint in {workdir}/checkpoints: --workdir must be the workdir of a '
        'pretraining run.'
    )
  step = max(steps) if step < 0 else step
  if step not in steps:
    raise ValueError(f'--step={step} is not among the checkpoints in {workdir}: {sorted(steps)}.')
  config = run_config.load_config(workdir)
  if fmt == 'torch':
    export_torch.check_exportable(config)
  variables = exported_variables(checkpoints.restore_read_only(manager, step, '--step'))
  directory = os.path.dirname(os.path.abspath(output))
  os.makedirs(directory, exist_ok=True)
  size = sum(int(np.asarray(x).nbytes) for x in jax.tree.leaves(variables))
  workdirs.require_free_space(directory, 2 * size, 'the export')
  # Aside under a name of this process's own, so that two exports at once cannot mix.
  aside = f'{output}.tmp{os.getpid()}'
  if fmt == 'savedmodel':
    shutil.rmtree(aside, ignore_errors=True)
    write_savedmodel(variables, config, aside)
    if os.path.exists(output):  # --overwrite: the old one goes once the new one is whole.
      shutil.rmtree(output, ignore_errors=True)
  else:
    with open(aside, 'wb') as f:
      f.write(serialize(variables, config, step, fmt))
  os.replace(aside, output)
  card = output + '.md'
  workdirs.write_atomically(card, model_card(workdir, variables, config, step, fmt, output))
  return {'output': output, 'model_card': card, 'step': step}


def define_flags(flag_values=flags.FLAGS):
  define = dict(flag_values=flag_values)
  flags.DEFINE_string(
      'workdir', None, 'Pretraining workdir: checkpoints/ and config.json.', required=True, **define
  )
  flags.DEFINE_enum('format', 'npz', FORMATS, 'Export format.', **define)
  flags.DEFINE_string('output', None, 'File to write (PATH.md gets the model card).', **define)
  flags.DEFINE_integer('step', -1, 'Checkpoint step (-1: the latest).', **define)
  flags.DEFINE_bool('overwrite', False, 'Replace an existing --output.', **define)
  flags.DEFINE_bool('verbose', False, 'Show the traceback of known errors.', **define)
  flags.mark_flag_as_required('output', flag_values=flag_values)


def main(argv, flag_values=flags.FLAGS):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  writers.quiet_orbax_logs()
  f = flag_values
  with cli_errors.as_sentences(f.verbose):
    result = export(f.workdir, f.output, f.format, f.step, f.overwrite)
  print(f'Wrote {result["output"]} (step {result["step"]}) and {result["model_card"]}.')


if __name__ == '__main__':
  define_flags()
  app.run(main)
