"""The online linear probe that every method trains beside its encoder: a linear classifier on
stop_gradient(h), so it monitors the representation without shaping it."""

import jax.numpy as jnp
import optax

# Its parameters' name in every method's model (optim.create_optimizer's supervised_head).
NAME = 'probe'


def add_loss(loss, params, logits, labels, weight_decay):
  """`loss` plus the probe's: the cross-entropy of `logits` [n, V, C] (V views of each of n
  images) against `labels` [n] and `weight_decay` * ||kernel||^2 / 2; returns (loss, metrics).

  The optimiser leaves the probe out of its decay, and the reference adds the probe's decay
  to the loss.
  """
  labels = jnp.repeat(labels, logits.shape[1])
  logits = logits.reshape((labels.shape[0], -1))
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  decay = weight_decay * 0.5 * jnp.sum(jnp.square(params[NAME]['kernel']))
  return loss + cross_entropy + decay, {
      'probe_loss': cross_entropy,
      'probe_weight_decay': decay,
      'probe_accuracy': jnp.mean(jnp.argmax(logits, axis=-1) == labels),
  }
