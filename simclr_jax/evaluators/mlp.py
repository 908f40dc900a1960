"""The MLP probe on frozen features: standardised features -> one hidden ReLU layer -> classes,
trained with Adam on minibatches of the train features, seeded (the probe of the down-scaled
SimCLR study; issue 17)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from simclr_jax import linear_classifier
from simclr_jax.evaluators import core


def init_params(rng, in_dim: int, hidden_dim: int, num_classes: int):
  """He-normal hidden layer, zero output layer (uniform predictions at the start)."""
  return {
      'hidden': {
          'kernel': jax.random.normal(rng, (in_dim, hidden_dim)) * np.sqrt(2.0 / in_dim),
          'bias': jnp.zeros(hidden_dim),
      },
      'output': {
          'kernel': jnp.zeros((hidden_dim, num_classes)),
          'bias': jnp.zeros(num_classes),
      },
  }


def mlp_logits(params, x):
  h = jax.nn.relu(x @ params['hidden']['kernel'] + params['hidden']['bias'])
  return h @ params['output']['kernel'] + params['output']['bias']


def fit(
    features,
    labels,
    num_classes: int,
    *,
    hidden_dim: int,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
):
  """(params, mean, scale) of an MLP fitted to standardised `features` [n, d], int `labels`."""
  x = jnp.asarray(features, jnp.float32)
  mean, scale = linear_classifier.standardisation(x)
  x = (x - mean) * scale
  y = jnp.asarray(labels, jnp.int32)
  n = x.shape[0]
  batch_size = min(batch_size, n)
  steps_per_epoch = n // batch_size
  init_rng, order_rng = jax.random.split(jax.random.PRNGKey(seed))
  params = init_params(init_rng, x.shape[1], hidden_dim, num_classes)
  tx = optax.adam(learning_rate)

  def loss_fn(params, xb, yb):
    return optax.softmax_cross_entropy_with_integer_labels(mlp_logits(params, xb), yb).mean()

  def epoch(carry, key):
    params, opt_state = carry
    order = jax.random.permutation(key, n)[: steps_per_epoch * batch_size]

    def step(carry, idx):
      params, opt_state = carry
      grads = jax.grad(loss_fn)(params, x[idx], y[idx])
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    carry, _ = jax.lax.scan(step, (params, opt_state), order.reshape(-1, batch_size))
    return carry, None

  train = jax.jit(lambda params, keys: jax.lax.scan(epoch, (params, tx.init(params)), keys)[0][0])
  params = train(params, jax.random.split(order_rng, epochs))
  return params, mean, scale


class MlpEvaluator(core.Evaluator):
  """An MLP probe (one hidden ReLU layer) on the train features, scored on the evaluation ones."""

  compare_with = (
      "MLP-probe figures, such as the down-scaled CIFAR-10 SimCLR study's (48.63% on SimCLR "
      'embeddings, 35.77% on raw pixels), not linear-evaluation figures.'
  )

  def validate(self, config):
    ev = config.eval
    for name in ('mlp_hidden_dim', 'mlp_epochs', 'mlp_batch_size'):
      if not (isinstance(ev[name], int) and ev[name] >= 1):
        raise ValueError(f'config.eval.{name}={ev[name]!r} must be an integer >= 1.')
    if not ev.mlp_learning_rate > 0:
      raise ValueError(f'config.eval.mlp_learning_rate={ev.mlp_learning_rate} must be > 0.')

  def settings(self, config):
    ev = config.eval
    return {
        'hidden_dim': ev.mlp_hidden_dim,
        'epochs': ev.mlp_epochs,
        'learning_rate': ev.mlp_learning_rate,
        'batch_size': ev.mlp_batch_size,
    }

  def run(self, config, train, evaluation, num_classes):
    ev = config.eval
    train, evaluation = core.pca_reduced(config, train, evaluation)
    params, mean, scale = fit(
        *train,
        num_classes,
        hidden_dim=ev.mlp_hidden_dim,
        epochs=ev.mlp_epochs,
        learning_rate=ev.mlp_learning_rate,
        batch_size=ev.mlp_batch_size,
        seed=config.seed,
    )
    x = (jnp.asarray(evaluation[0], jnp.float32) - mean) * scale
    return core.accuracies(np.asarray(mlp_logits(params, x)), evaluation[1], num_classes)
