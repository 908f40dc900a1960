"""Self-supervised methods behind one registry (core.py): SimCLR (simclr.py)."""

from simclr_jax.methods.core import METHODS
from simclr_jax.methods.core import Method
from simclr_jax.methods.core import get

__all__ = ['METHODS', 'Method', 'get']
