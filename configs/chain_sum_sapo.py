"""SAPO on chain sums (arXiv 2511.20347): a soft sigmoid gate on the token ratio, no hard clip.

  python -m postrain.train --config configs/chain_sum_sapo.py --workdir runs/chain_sum_sapo
  python -m postrain.train --config configs/chain_sum_sapo.py:scale=smoke --workdir runs/smoke_sapo

The gate temperatures are `config.rl.sapo` (tau_pos 1.0, tau_neg 1.05: the paper's); the algorithm
is a `postrain.train.algorithms` registry entry (docs/architecture.md, "Add a loss").
"""

import os

from postrain.train import config as base


def get_config(arg: str | None = None):
  default = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py")
  return base.load_config_file(default, ",".join(filter(None, ["algorithm=sapo", arg])))
