"""Data sources behind one dispatch (core.py); `datasets.get(config)` picks config.dataset's."""

from simclr_jax.datasets.core import DatasetInfo
from simclr_jax.datasets.core import DataSource
from simclr_jax.datasets.core import Shard
from simclr_jax.datasets.core import decode_bytes
from simclr_jax.datasets.core import error_reason
from simclr_jax.datasets.core import get
from simclr_jax.datasets.core import read_options

__all__ = [
    'DataSource',
    'DatasetInfo',
    'Shard',
    'decode_bytes',
    'error_reason',
    'get',
    'read_options',
]
