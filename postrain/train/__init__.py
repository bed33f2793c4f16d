"""The training stack: configs, the SFT / RL loop, checkpoints and metrics.

python -m postrain.train --config configs/default.py --workdir runs/default
"""

from postrain.train._loop import Trainer, build_model, train
from postrain.train.config import base_config, validate

__all__ = ["Trainer", "base_config", "build_model", "train", "validate"]
