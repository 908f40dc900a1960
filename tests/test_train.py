"""The jitted train step: 8 devices equal 1 device (loss, gradients, BatchNorm statistics), with
and without micro-batches."""

import json
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import tiny_config
from multidevice import run_on_eight_cpu_devices
from simclr_jax import augment_jax
from simclr_jax import train
from simclr_jax.core import train_state

# In float64 (jax_enable_x64): the 8-device and 1-device steps sum in different orders, and in
# float32 the BatchNorm-scale gradients, small sums of large terms that cancel, came out 6e-4
# apart on one element (issue 21); in float64 such rounding is ~1e-13 of the gradients' scale,
# while a sharding bug (local negatives, per-device BatchNorm) moves them by percents.
_STEP_SCRIPT = textwrap.dedent("""
    import functools, itertools, sys
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update('jax_enable_x64', True)
    from simclr_jax import methods
    from simclr_jax.core import optim, sharding, train_state
    from simclr_jax.config_files import load_config_file
    from simclr_jax.core.sharding import batch_sharded, create_mesh, replicated
    sys.path.insert(0, 'tests')  # The script runs from the repository root.
    from toy_encoder import ToyEncoder
    out_file, cases = sys.argv[1:]
    rng = np.random.default_rng(0)
    batch = {'views': rng.uniform(size=(16, 2, 16, 16, 3)),
             'label': rng.integers(0, 10, size=16).astype(np.int32)}
    local_views = rng.uniform(size=(16, 3, 8, 8, 3))  # DINO's multi-crop: 3 local crops.
    out = {}

    for case, spec in enumerate(cases.split(';')):
      encoder, microbatches, method_names = spec.split(':')
      for name in method_names.split(','):
        config = load_config_file(f'configs/cifar10{"" if name == "simclr" else "_" + name}.py')
        config.model.width_multiplier = 0.125
        config.model.conv_impl = 'xla'  # The patch matmuls accumulate in float32.
        config.image_size, config.batch_size, config.warmup_epochs = 16, 16, 0
        # Plain SGD at lr 1 (16 * 16 / 256) without momentum or decay: new params = params - grads.
        config.optimizer, config.learning_rate = 'sgd', 16.0
        config.momentum, config.weight_decay = 0.0, 0.0
        if name == 'dino':
          config.dino.hidden_dim, config.dino.bottleneck_dim, config.dino.output_dim = 32, 8, 16
          config.dino.freeze_last_layer_epochs = 0  # Its gradient is compared too.
        elif name != 'simclr':
          config[name].projector_hidden_dim = config[name].predictor_hidden_dim = 32
          config[name].output_dim = 16
        if encoder == 'vit':  # 24 wide, 4 tokens; dropout masks must not depend on the mesh.
          config.model.name, config.model.patch_size = 'vit_ti', 8
          config.model.dropout = config.model.drop_path = 0.1
        method = methods.get(config, num_examples=160)
        model = method.create_model(10)
        # float64 throughout; two one-block stages (a stride-2 projection included) or two
        # transformer blocks compile far faster than the full depth.
        shallow = {'stage_sizes': (1, 1)} if encoder != 'vit' else {'depth': 2}
        model = model.clone(**{
            k: getattr(model, k).clone(dtype=jnp.float64, **(shallow if k == 'encoder' else {}))
            for k in ('encoder', 'head', 'predictor') if getattr(model, k, None) is not None})
        if encoder == 'toy':
          model = model.clone(encoder=ToyEncoder())
        schedule = optim.learning_rate_schedule(config, 160, 10)
        assert float(schedule(0)) == 1.0
        tx = method.create_optimizer(schedule)

        def init():
          state = method.init_state(model, tx, jax.random.PRNGKey(0))
          # Random BN scales: at init the zeroed block scales would hide most of the gradients;
          # a target apart from the online network.
          keys = iter(jax.random.split(jax.random.PRNGKey(1), 1000))
          perturb = lambda tree: jax.tree.map(
              lambda p: p.astype(jnp.float64) + 0.3 * jax.random.normal(next(keys), p.shape,
                                                                        jnp.float64), tree)
          params = perturb(state.params)
          as64 = lambda tree: jax.tree.map(lambda s: s.astype(jnp.float64), tree)
          method_state = state.method_state
          if method_state:  # DINO's centre too.
            method_state = {**perturb(method_state),
                            'target': {'params': perturb(method_state['target']['params']),
                                       'batch_stats': as64(method_state['target']['batch_stats'])}}
          return state.replace(params=params, batch_stats=as64(state.batch_stats),
                               opt_state=tx.init(params), method_state=method_state)

        initial = jax.device_get(sharding.run_once(init))  # On the host: copied to each mesh.
        # Only SimCLR has the gradient cache.
        for devices, micro in itertools.product(
            (8, 1), microbatches.split(',') if name == 'simclr' else ['1']):
          config.microbatches = int(micro)
          mesh = create_mesh(jax.devices()[:devices])
          state = jax.device_put(initial, replicated(mesh))
          params = jax.device_get(state.params)
          global_batch = jax.device_put(
              {**batch, 'local_views': local_views} if name == 'dino' else batch,
              batch_sharded(mesh))
          new_state, metrics = method.make_train_step(model, tx, schedule, mesh, 10)(
              state, global_batch)
          grads = jax.tree.map(lambda p, q: p - q, params, jax.device_get(new_state.params))
          trees = {'metrics': metrics, 'grads': grads, 'batch_stats': new_state.batch_stats,
                   'method_state': new_state.method_state}
          for tree_name, tree in trees.items():
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
              key = f'{case}/{devices}/{name}/{micro}/{tree_name}{jax.tree_util.keystr(path)}'
              out[key] = np.asarray(leaf)
    np.savez(out_file, **out)
    print('saved')
""")


# Micro-batches (the gradient cache) of 8 pairs: BatchNorm over each micro-batch's 16 views on
# all devices, the loss over all 16 pairs. BYOL and MoCo v3: their target network's EMA and
# BatchNorm statistics too, each view normalised on its own over all devices; MoCo v3's keys
# gathered from all devices; SimSiam's stop-gradient; DINO's centre (all-reduced teacher
# outputs) and its crops of two sizes, each size normalised together. Those three share the step of
# methods/siamese.py, tested on a Dense -> BatchNorm encoder (SimCLR's holds the ResNet's
# BatchNorm layers equal on 8 devices).
# One interpreter for the three cases: each start costs ~10 s of imports and JAX set-up.
_CASES = (
    ('resnet', '1,2', 'simclr'),
    ('toy', '1', 'byol,mocov3,simsiam,dino'),
    ('vit', '2', 'simclr'),
)


def test_train_step_on_eight_devices_equals_one_device(tmp_path):
  out_file = tmp_path / 'out.npz'
  run_on_eight_cpu_devices(_STEP_SCRIPT, str(out_file), ';'.join(':'.join(c) for c in _CASES))
  results = np.load(out_file)
  for case, (_, microbatches, method_names) in enumerate(_CASES):
    keys = [k[len(f'{case}/8/') :] for k in results.files if k.startswith(f'{case}/8/')]
    assert any('grads' in k for k in keys) and any('batch_stats' in k for k in keys)
    assert {k.split('/')[1] for k in keys} == set(microbatches.split(','))
    if 'byol' in method_names:
      for name in ('byol', 'mocov3', 'dino'):
        assert any(f"{name}/1/method_state['target']['batch_stats']" in k for k in keys)
      assert "dino/1/method_state['centre']" in keys
    for key in keys:
      eight, one = results[f'{case}/8/{key}'], results[f'{case}/1/{key}']
      scale = np.abs(one).max()
      assert scale > 0 or 'metrics' in key, key
      # Really in float64 (the accuracies are ratios of counts, the learning rate and EMA decay
      # schedule constants).
      assert one.dtype != np.float32 or any(
          k in key for k in ('accuracy', 'learning_rate', 'ema_decay', 'teacher_temperature')
      ), key
      np.testing.assert_allclose(
          eight, one, rtol=0, atol=1e-9 * scale + 1e-12, err_msg=f'{_CASES[case]}: {key}'
      )


def test_non_finite_updates_are_not_applied():
  old, new = {'w': jnp.ones(3), 'step': jnp.int32(4)}, {'w': jnp.full(3, 2.0), 'step': jnp.int32(5)}
  for loss, grad, finite in [(1.0, 0.5, True), (jnp.nan, 0.5, False), (1.0, jnp.inf, False)]:
    state, metrics = train_state.only_if_finite(
        jnp.float32(loss), {'g': jnp.full(3, grad)}, new, old, {'loss': loss}
    )
    assert bool(metrics['finite']) == finite
    np.testing.assert_array_equal(state['w'], (new if finite else old)['w'])
    assert int(state['step']) == (5 if finite else 4)


def test_divergence_stops_with_the_step_and_last_good_checkpoint(
    cifar10_subset, tmp_path, toy_encoder
):
  config = tiny_config(cifar10_subset)
  config.model.name = toy_encoder
  # Plain SGD at an absurd learning rate overflows within a few steps.
  config.optimizer, config.learning_rate, config.warmup_epochs = 'sgd', 1e30, 0.0
  config.num_train_steps, config.log_every_steps, config.checkpoint_every_steps = 6, 1, 1
  config.eval_every_steps = 0
  with pytest.raises(FloatingPointError) as error:
    train.train_and_evaluate(config, str(tmp_path))
  message = str(error.value)
  bad_step = int(message.split('infinite at step ')[1].split(';')[0])
  manager = ocp.CheckpointManager(
      tmp_path / 'checkpoints', options=ocp.CheckpointManagerOptions(read_only=True)
  )
  assert manager.all_steps() == list(range(1, bad_step))
  assert f'last good checkpoint is step {bad_step - 1}' in message
  state = manager.restore(bad_step - 1)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))


def test_augment_on_device_trains_on_smaller_views(
    cifar10_subset, tmp_path, monkeypatch, toy_encoder
):
  # tf.data only decodes; the jitted step makes the views. Their distribution is tested in
  # test_augment_jax.py, the decoded stream's determinism and resume in test_input_pipeline.py.
  # Views of 24 pixels, evaluated (the kNN monitor) at the images' 32.
  config = tiny_config(cifar10_subset)
  config.model.name = toy_encoder
  config.augment_on_device = True
  config.pretrain_image_size = 24
  config.num_train_steps, config.eval_every_steps = 2, 2
  # Crop and flip only: the colour stages would double the compile time of this test.
  config.augment.color_jitter_prob = config.augment.grayscale_prob = 0.0
  view_shapes = []
  pretrain_views = augment_jax.pretrain_views

  def recorded(*args):
    views = pretrain_views(*args)
    view_shapes.append(views.shape)
    return views

  monkeypatch.setattr(augment_jax, 'pretrain_views', recorded)
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 2
  assert view_shapes == [(32, 2, 24, 24, 3)]  # Traced once, for the whole batch.
  with open(tmp_path / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  assert [r['step'] for r in records] == [2]
  assert np.isfinite(records[0]['loss']) and records[0]['contrastive_loss'] > 0
  assert 0 <= records[0]['knn_top1'] <= 1
