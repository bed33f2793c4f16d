"""Dr.GRPO on chain sums: the default task, model and SFT warm start, with the Dr.GRPO objective.

  python -m postrain.train --config configs/chain_sum_dr_grpo.py --workdir runs/chain_sum_dr_grpo
  python -m postrain.train --config configs/chain_sum_dr_grpo.py:scale=smoke --workdir runs/smoke_dr_grpo

The algorithm's hyperparameters are `postrain.train.config.set_algorithm`'s defaults (the paper's).
"""

import os

from postrain.train import config as base


def get_config(arg: str | None = None):
  default = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py")
  return base.load_config_file(default, ",".join(filter(None, ["algorithm=dr_grpo", arg])))
