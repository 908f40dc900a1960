"""simclr_jax.export: the encoder and head leave the codebase intact and come back equal."""

import json
import logging
import os
from absl import flags
import jax
import numpy as np
import pytest
import tensorflow as tf

from simclr_jax import export
from simclr_jax import models
from simclr_jax.core import checkpoints
from simclr_jax.core import run_config


def _files(folder):
  return sorted(
      (
          os.path.relpath(os.path.join(root, name), folder),
          os.path.getmtime(os.path.join(root, name)),
      )
      for root, _, names in os.walk(folder)
      for name in names
  )


@pytest.mark.parametrize('fmt', ['npz', 'msgpack'])
def test_export_round_trip_gives_the_same_encoder(pretrained_workdir, tmp_path, fmt):
  before = _files(pretrained_workdir)
  output = str(tmp_path / f'encoder.{fmt}')
  result = export.export(str(pretrained_workdir), output, fmt)
  assert _files(pretrained_workdir) == before  # The run is read, never written.
  restored = checkpoints.restore_read_only(
      checkpoints.read_only_manager(str(pretrained_workdir)), result['step']
  )
  variables, config, step = export.load(output)
  assert step == result['step'] == 4 and config.model.name == 'resnet18'
  assert set(variables['params']) == {'encoder', 'head'}  # The probe stays behind.
  for collection in ('params', 'batch_stats'):
    for name in ('encoder', 'head'):
      expected = jax.tree_util.tree_leaves_with_path(restored[collection][name])
      got = dict(jax.tree_util.tree_leaves_with_path(variables[collection][name]))
      assert len(expected) == len(got)
      for path, value in expected:
        np.testing.assert_array_equal(got[path], value)
  # The module rebuilt from the exported config takes the exported variables.
  model = models.create_model(config.model, image_size=config.image_size)
  images = np.random.default_rng(0).uniform(size=(3, 32, 32, 3)).astype(np.float32)
  h = model.apply(variables, images, train=False, method='encode')
  h_checkpoint = model.apply(
      {c: restored[c] for c in ('params', 'batch_stats')}, images, train=False, method='encode'
  )
  assert h.shape == (3, 64)
  np.testing.assert_array_equal(h, h_checkpoint)
  card = open(result['model_card']).read()
  assert 'resnet18 encoder, simclr pretraining, step 4' in card
  assert 'knn_top1 at step 4' in card and f"export.load('encoder.{fmt}')" in card


def test_savedmodel_serves_h_and_z_for_any_batch(pretrained_workdir, tmp_path):
  output = str(tmp_path / 'encoder_savedmodel')
  absl_level = logging.getLogger('absl').level
  result = export.export(str(pretrained_workdir), output, 'savedmodel')
  assert logging.getLogger('absl').level == absl_level  # TensorFlow's save raises it.
  serve = tf.saved_model.load(output).signatures['serving_default']
  variables, _, _ = export.load(
      export.export(str(pretrained_workdir), output + '.npz', 'npz')['output']
  )
  config = run_config.load_config(str(pretrained_workdir))
  model = models.create_model(config.model, image_size=32)
  for n in (2, 5):
    images = np.random.default_rng(n).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    out = {k: v.numpy() for k, v in serve(images=tf.constant(images)).items()}
    expected = model.apply(variables, images.astype(np.float32) / 255, train=False)
    assert out['h'].shape == (n, 64) and out['z'].shape == (n, 128)
    for key in ('h', 'z'):
      np.testing.assert_allclose(
          out[key], expected[key], rtol=1e-4, atol=1e-5 * np.abs(expected[key]).max()
      )
  assert 'tf.saved_model.load' in open(result['model_card']).read()


def test_npz_needs_only_numpy(pretrained_workdir, tmp_path):
  output = str(tmp_path / 'encoder.npz')
  export.export(str(pretrained_workdir), output, 'npz')
  with np.load(output, allow_pickle=False) as archive:
    config = json.loads(str(archive['__config__']))
    kernel = archive['params/encoder/stem_conv/kernel']
  assert config['model']['name'] == 'resnet18' and kernel.ndim == 4


def test_bad_requests_are_named_and_nothing_is_overwritten(pretrained_workdir, tmp_path, capsys):
  output = tmp_path / 'encoder.npz'
  output.write_bytes(b'mine')
  with pytest.raises(ValueError, match='exists; pass --overwrite'):
    export.export(str(pretrained_workdir), str(output), 'npz')
  assert output.read_bytes() == b'mine'
  with pytest.raises(ValueError, match=r'must end with \.msgpack'):
    export.export(str(pretrained_workdir), str(tmp_path / 'x.npz'), 'msgpack')
  with pytest.raises(ValueError, match=r'--step=3 is not among the checkpoints'):
    export.export(str(pretrained_workdir), str(tmp_path / 'y.npz'), 'npz', step=3)
  flag_values = flags.FlagValues()
  export.define_flags(flag_values)
  flag_values(['export', f'--workdir={tmp_path}', f'--output={tmp_path}/z.npz'])
  with pytest.raises(SystemExit) as stop:
    export.main(['export'], flag_values)
  assert stop.value.code == 2 and 'No checkpoint in' in capsys.readouterr().err
