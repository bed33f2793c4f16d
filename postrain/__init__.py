"""postrain: JAX-native reinforcement-learning post-training for language models.

The pure-function core is importable without models, configs or trainers::

  from postrain import losses, advantages
"""

from postrain import advantages, losses

__version__ = "0.1.0"

__all__ = ["advantages", "losses", "__version__"]
