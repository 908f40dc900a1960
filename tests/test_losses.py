"""NT-Xent and MoCo v3's InfoNCE against naive numpy loops, on one device and sharded over
eight (NT-Xent chunked and not)."""

import functools
import json
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simclr_jax import losses
from multidevice import run_on_eight_cpu_devices


def naive_nt_xent(z_a, z_b, temperature):
  """Loss, accuracy and entropy by looping over anchors and candidates (float64).

  The reference's definitions: loss = mean over view-a anchors + mean over view-b anchors;
  accuracy and entropy from the view-a anchors' similarities to the N view-b rows alone.
  """
  z_a = z_a / np.linalg.norm(z_a, axis=1, keepdims=True)
  z_b = z_b / np.linalg.norm(z_b, axis=1, keepdims=True)
  n = len(z_a)
  total_loss = correct = total_entropy = 0.0
  for view, (anchors, same, other) in enumerate(((z_a, z_a, z_b), (z_b, z_b, z_a))):
    for i in range(n):
      # Candidates: every other-view row (positive at i) and every same-view row but i itself.
      sims = [anchors[i] @ other[j] / temperature for j in range(n)]
      sims += [anchors[i] @ same[j] / temperature for j in range(n) if j != i]
      sims = np.array(sims)
      log_z = np.log(np.sum(np.exp(sims - sims.max()))) + sims.max()
      total_loss += log_z - sims[i]
      if view == 0:
        other_sims = sims[:n]
        correct += float(np.argmax(other_sims) == i)
        probs = np.exp(other_sims - other_sims.max())
        probs /= probs.sum()
        total_entropy += -np.sum(probs * np.log(probs))
  return total_loss / n, correct / n, total_entropy / n


@pytest.mark.parametrize('seed,n,d,temperature', [(0, 6, 5, 0.5), (1, 9, 16, 0.1), (2, 4, 3, 1.0)])
def test_value_accuracy_entropy_match_naive_loop(seed, n, d, temperature):
  rng = np.random.default_rng(seed)
  z_b = rng.normal(size=(n, d))
  z_a = z_b + 0.8 * rng.normal(size=(n, d))  # Correlated views: accuracy is neither 0 nor 1.
  out = losses.nt_xent(jnp.asarray(z_a, jnp.float32), jnp.asarray(z_b, jnp.float32), temperature)
  loss, acc, ent = naive_nt_xent(z_a, z_b, temperature)
  np.testing.assert_allclose(out.loss, loss, rtol=1e-5)
  np.testing.assert_allclose(out.accuracy, acc, atol=1e-7)
  np.testing.assert_allclose(out.entropy, ent, rtol=1e-5)


def test_gradient_matches_finite_differences_of_naive_loop():
  rng = np.random.default_rng(3)
  n, d, temperature = 5, 4, 0.2
  z_a, z_b = rng.normal(size=(n, d)), rng.normal(size=(n, d))
  grad_a, grad_b = jax.grad(lambda a, b: losses.nt_xent(a, b, temperature).loss, argnums=(0, 1))(
      jnp.asarray(z_a, jnp.float32), jnp.asarray(z_b, jnp.float32)
  )
  eps = 1e-6
  for z, grad, which in ((z_a, grad_a, 0), (z_b, grad_b, 1)):
    numeric = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
      plus, minus = z.copy(), z.copy()
      plus[idx] += eps
      minus[idx] -= eps
      args_plus = (plus, z_b) if which == 0 else (z_a, plus)
      args_minus = (minus, z_b) if which == 0 else (z_a, minus)
      numeric[idx] = (
          naive_nt_xent(*args_plus, temperature)[0] - naive_nt_xent(*args_minus, temperature)[0]
      ) / (2 * eps)
    assert np.abs(numeric).max() > 1e-2  # The check below is not vacuous.
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=2e-5)


def test_chunked_loss_and_gradients_equal_unchunked():
  rng = np.random.default_rng(6)
  z_b = rng.normal(size=(12, 8))
  z_a = z_b + 0.8 * rng.normal(size=(12, 8))

  @functools.partial(jax.jit, static_argnums=2)
  def value_and_grads(a, b, chunk):  # Gradients of loss + entropy: both paths are checked.
    def objective(a, b):
      out = losses.nt_xent(a, b, 0.3, chunk_size=chunk)
      return out.loss + out.entropy, out

    return jax.grad(objective, argnums=(0, 1), has_aux=True)(a, b)

  inputs = jnp.asarray(z_a, jnp.float32), jnp.asarray(z_b, jnp.float32)
  ref_grads, ref = value_and_grads(*inputs, 0)
  grads, out = value_and_grads(*inputs, 4)  # Three chunks: the first, then a scan of two.
  assert 0 < float(ref.accuracy) < 1
  np.testing.assert_allclose(out.loss, ref.loss, rtol=1e-6)
  np.testing.assert_array_equal(out.accuracy, ref.accuracy)
  np.testing.assert_allclose(out.entropy, ref.entropy, rtol=1e-6)
  for g, g_ref in zip(grads, ref_grads):
    assert np.abs(g_ref).max() > 1e-2
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-7)


def test_chunk_size_must_divide_anchors():
  z = jnp.ones((6, 4))
  with pytest.raises(ValueError, match='contrastive_chunk_size=4 must divide the 6 anchors'):
    losses.nt_xent(z, z, 0.5, chunk_size=4)


def test_loss_is_invariant_to_scale_of_projections():
  rng = np.random.default_rng(4)
  z_a, z_b = (jnp.asarray(rng.normal(size=(8, 6)), jnp.float32) for _ in range(2))
  np.testing.assert_allclose(
      losses.nt_xent(z_a, z_b, 0.5).loss, losses.nt_xent(3.0 * z_a, 0.1 * z_b, 0.5).loss, rtol=1e-5
  )


def naive_info_nce(q, k, temperature):
  """MoCo v3's ctr(q, k) by looping over queries (float64): 2 T * the mean of each query's
  cross-entropy against all keys, its own key the positive; accuracy and entropy of the rows;
  and the gradient of the loss with respect to q, written out by the chain rule."""
  q_norm = np.linalg.norm(q, axis=1, keepdims=True)
  q_hat, k_hat = q / q_norm, k / np.linalg.norm(k, axis=1, keepdims=True)
  n = len(q)
  loss = correct = entropy = 0.0
  grad = np.zeros_like(q)
  for i in range(n):
    logits = np.array([q_hat[i] @ k_hat[j] / temperature for j in range(n)])
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    loss += -np.log(probs[i])
    correct += float(np.argmax(logits) == i)
    entropy += -np.sum(probs * np.log(probs))
    # d(-log p_i)/d logits = probs - onehot(i); logits = q_hat k_hat^T / T.
    d_q_hat = (probs - np.eye(n)[i]) @ k_hat / temperature
    grad[i] = (d_q_hat - q_hat[i] * (q_hat[i] @ d_q_hat)) / q_norm[i]
  scale = 2 * temperature / n
  return scale * loss, correct / n, entropy / n, scale * grad


@pytest.mark.parametrize('seed,n,d,temperature', [(0, 6, 5, 0.2), (1, 9, 16, 1.0)])
def test_info_nce_value_gradient_and_metrics_match_naive_loop(seed, n, d, temperature):
  rng = np.random.default_rng(seed)
  k = rng.normal(size=(n, d))
  q = 3.0 * (k + 0.5 * rng.normal(size=(n, d)))  # Correlated, unnormalised queries,
  q[[0, 1]] = q[[1, 0]]  # two of them matched with the wrong key.
  q32, k32 = jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32)
  out = losses.info_nce(q32, k32, temperature)
  loss, acc, ent, grad_q = naive_info_nce(q, k, temperature)
  assert 0 < acc < 1
  np.testing.assert_allclose(out.loss, loss, rtol=1e-5)
  np.testing.assert_allclose(out.accuracy, acc, atol=1e-7)
  np.testing.assert_allclose(out.entropy, ent, rtol=1e-5)
  got_q, got_k = jax.grad(lambda q, k: losses.info_nce(q, k, temperature).loss, (0, 1))(q32, k32)
  np.testing.assert_allclose(got_q, grad_q, atol=1e-5 * np.abs(grad_q).max())
  assert not np.any(got_k)  # The keys are the momentum encoder's: constants.


# In float64 (jax_enable_x64), so that the sharded and unsharded sums, taken in other orders,
# agree to ~1e-15 and can be compared tightly on any machine (issue 21).
_SHARDED_SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update('jax_enable_x64', True)
    from simclr_jax import losses
    from simclr_jax.core.sharding import create_mesh
    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(5)
    z_a, z_b = (jnp.asarray(rng.normal(size=(32, 16)), jnp.float64) for _ in range(2))
    results = {}
    for devices, chunk in ((8, 0), (1, 0), (8, 2)):
      mesh = create_mesh(jax.devices()[:devices])
      sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
      a, b = jax.device_put(z_a, sharding), jax.device_put(z_b, sharding)
      fn = jax.jit(jax.value_and_grad(
          lambda a, b: losses.nt_xent(a, b, 0.2, mesh, chunk_size=chunk).loss, argnums=(0, 1)))
      loss, grads = fn(a, b)
      out = losses.nt_xent(a, b, 0.2, mesh, chunk_size=chunk)
      results[f'{devices}/{chunk}'] = dict(loss=float(loss), acc=float(out.accuracy),
                              entropy=float(out.entropy),
                              grads=[np.asarray(g).tolist() for g in grads])
      if chunk == 0:  # MoCo v3's InfoNCE, the keys gathered from every device.
        out = losses.info_nce(a, b, 0.2, mesh)
        grad = jax.jit(jax.grad(lambda q, k: losses.info_nce(q, k, 0.2, mesh).loss))(a, b)
        results[f'info_nce/{devices}'] = dict(loss=float(out.loss), acc=float(out.accuracy),
                                              entropy=float(out.entropy),
                                              grad=np.asarray(grad).tolist())
    print(json.dumps(results))
""")


def test_sharded_loss_and_gradients_equal_single_device_and_naive():
  results = json.loads(run_on_eight_cpu_devices(_SHARDED_SCRIPT))
  sharded, single, chunked = results['8/0'], results['1/0'], results['8/2']
  rng = np.random.default_rng(5)
  z_a, z_b = rng.normal(size=(32, 16)), rng.normal(size=(32, 16))
  loss, acc, entropy = naive_nt_xent(z_a, z_b, 0.2)
  np.testing.assert_allclose(sharded['loss'], loss, rtol=1e-12)
  np.testing.assert_allclose(sharded['acc'], acc, atol=1e-15)
  np.testing.assert_allclose(sharded['entropy'], entropy, rtol=1e-12)
  np.testing.assert_allclose(sharded['loss'], single['loss'], rtol=1e-13)
  np.testing.assert_allclose(chunked['loss'], single['loss'], rtol=1e-13)
  for g8, g1, g8c in zip(sharded['grads'], single['grads'], chunked['grads']):
    scale = np.abs(np.array(g1)).max()
    assert scale > 1e-2
    np.testing.assert_allclose(np.array(g8), np.array(g1), rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(np.array(g8c), np.array(g1), rtol=0, atol=1e-12 * scale)
  rng = np.random.default_rng(5)
  q, k = rng.normal(size=(32, 16)), rng.normal(size=(32, 16))
  eight, one = results['info_nce/8'], results['info_nce/1']
  for got, want in zip(
      [eight['loss'], eight['acc'], eight['entropy'], eight['grad']], naive_info_nce(q, k, 0.2)
  ):
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(eight['grad'], one['grad'], rtol=0, atol=1e-13)
