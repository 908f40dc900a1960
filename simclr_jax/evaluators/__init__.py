"""Evaluators of a pretrained encoder behind one registry (core.py), the feature extraction they
share (features.py), periodic evaluation in pretraining (monitor.py), eval_results.json
(results.py)."""

from simclr_jax.evaluators.core import EVALUATORS
from simclr_jax.evaluators.core import LEGACY_MODES
from simclr_jax.evaluators.core import Evaluator
from simclr_jax.evaluators.core import TrainingEvaluator
from simclr_jax.evaluators.core import accuracies
from simclr_jax.evaluators.core import evaluation_config
from simclr_jax.evaluators.core import get
from simclr_jax.evaluators.core import legacy_mode_notice
from simclr_jax.evaluators.core import monitors
from simclr_jax.evaluators.core import protocol
from simclr_jax.evaluators.core import score
from simclr_jax.evaluators.core import trains

__all__ = [
    'EVALUATORS',
    'LEGACY_MODES',
    'Evaluator',
    'TrainingEvaluator',
    'accuracies',
    'evaluation_config',
    'get',
    'legacy_mode_notice',
    'monitors',
    'protocol',
    'score',
    'trains',
]
