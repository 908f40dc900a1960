"""The jitted train step: 8 devices equal 1 device (loss, gradients, BatchNorm statistics)."""

import textwrap

import numpy as np

from multidevice import run_on_eight_cpu_devices

_STEP_SCRIPT = textwrap.dedent('''
    import functools, sys
    import jax, jax.numpy as jnp, numpy as np
    from simclr_jax import models, optim, sharding, train
    from simclr_jax.config_files import load_config_file
    from simclr_jax.sharding import batch_sharded, create_mesh, replicated
    config = load_config_file('configs/cifar10.py')
    config.model.width_multiplier = 0.125
    config.batch_size, config.num_train_steps, config.warmup_epochs = 16, 10, 0
    # Plain SGD at lr 1 (16 * 16 / 256) without momentum or decay: new params = params - grads.
    config.optimizer, config.learning_rate, config.momentum, config.weight_decay = 'sgd', 16., 0., 0.
    model = models.create_model(config.model, image_size=16, num_classes=10)
    schedule = optim.learning_rate_schedule(config, 160, 10)
    assert float(schedule(0)) == 1.0
    tx = optim.create_optimizer(config, schedule)
    rng = np.random.default_rng(0)
    batch = {'views': rng.uniform(size=(16, 2, 16, 16, 3)).astype(np.float32),
             'label': rng.integers(0, 10, size=16).astype(np.int32)}

    def init():
      state = train.init_train_state(model, tx, jax.random.PRNGKey(0), 16)
      # Random BN scales: at init the zeroed block scales would hide most of the gradients.
      keys = iter(jax.random.split(jax.random.PRNGKey(1), 1000))
      params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(next(keys), p.shape),
                            state.params)
      return state.replace(params=params)

    out = {}
    for devices in (8, 1):
      mesh = create_mesh(jax.devices()[:devices])
      state = sharding.run_once(init, out_shardings=replicated(mesh))
      params = jax.device_get(state.params)
      global_batch = jax.device_put(batch, batch_sharded(mesh))
      new_state, metrics = train.make_train_step(model, tx, schedule, 0.5, mesh)(
          state, global_batch)
      grads = jax.tree.map(lambda p, q: p - q, params, jax.device_get(new_state.params))
      trees = {'metrics': metrics, 'grads': grads, 'batch_stats': new_state.batch_stats}
      for name, tree in trees.items():
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
          out[f'{devices}/{name}{jax.tree_util.keystr(path)}'] = np.asarray(leaf)
    np.savez(sys.argv[1] if len(sys.argv) > 1 else 'out.npz', **out)
    print('saved')
''')


def test_train_step_on_eight_devices_equals_one_device(tmp_path):
  out_file = tmp_path / 'out.npz'
  run_on_eight_cpu_devices(_STEP_SCRIPT, str(out_file))
  results = np.load(out_file)
  keys = [k[2:] for k in results.files if k.startswith('8/')]
  assert any('grads' in k for k in keys) and any('batch_stats' in k for k in keys)
  for key in keys:
    eight, one = results['8/' + key], results['1/' + key]
    scale = np.abs(one).max()
    assert scale > 0 or 'metrics' in key, key
    np.testing.assert_allclose(eight, one, rtol=0, atol=1e-4 * scale + 1e-7, err_msg=key)
