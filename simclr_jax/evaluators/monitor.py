"""Evaluators run periodically during pretraining (config.eval.monitors)."""

import jax

from simclr_jax import input_pipeline
from simclr_jax.evaluators import core
from simclr_jax.evaluators import features


class Monitor:
  """The evaluators of config.eval.monitors on the encoder being pretrained.

  Each call embeds config.eval.max_examples (0: all) examples of the train and evaluation
  splits once and returns every evaluator's metrics as NAME_METRIC (e.g. knn_top1).
  """

  def __init__(self, config, model, mesh, num_classes: int):
    self._config, self._mesh, self._num_classes = config, mesh, num_classes
    self._evaluators = {name: core.get(name) for name in core.monitors(config)}
    self._feature_fn = features.make_feature_fn(model, mesh, 'pretrained')
    local_batch_size = config.eval.batch_size // jax.process_count()
    self._datasets = [
        (
            split,
            input_pipeline.create_eval_dataset(
                config,
                split,
                local_batch_size=local_batch_size,
                max_examples=config.eval.max_examples,
            )[0],
        )
        for split in (config.train_split, config.eval.split)
    ]

  def __call__(self, params, batch_stats) -> dict:
    variables = {'params': params, 'batch_stats': batch_stats}
    train, evaluation = (
        features.extract_features(
            self._feature_fn,
            variables,
            ds,
            self._mesh,
            config=self._config,
            split=split,
            description='Monitor',
        )
        for split, ds in self._datasets
    )
    return {
        f'{name}_{key}': value
        for name, evaluator in self._evaluators.items()
        for key, value in evaluator.run(self._config, train, evaluation, self._num_classes).items()
    }
