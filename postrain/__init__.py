"""postrain: JAX-native reinforcement-learning post-training for language models.

The pure-function core is importable without models, configs or trainers::

  from postrain import losses, advantages

Subpackages load on first use (`postrain.models`, `.sampling`, `.tasks`, `.selection`, `.train`),
so `import postrain` stays cheap for processes that need only part of it (e.g. verifier workers).
"""

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBPACKAGES = (
  "advantages",
  "losses",
  "models",
  "sampling",
  "selection",
  "sharding",
  "tasks",
  "train",
  "kernels",
)

__all__ = ["__version__", *_SUBPACKAGES]


def __getattr__(name: str) -> Any:
  if name in _SUBPACKAGES:
    return importlib.import_module(f"postrain.{name}")
  raise AttributeError(f"module 'postrain' has no attribute {name!r}")
