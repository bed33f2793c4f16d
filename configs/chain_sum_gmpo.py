"""GMPO on chain sums (arXiv 2507.20673): the geometric-mean sequence ratio, log-ratio clip 0.4.

  python -m postrain.train --config configs/chain_sum_gmpo.py --workdir runs/chain_sum_gmpo
  python -m postrain.train --config configs/chain_sum_gmpo.py:scale=smoke --workdir runs/smoke_gmpo

The clip range is rl.eps_low = rl.eps_high = 0.4 in log space (the paper's); the algorithm is a
`postrain.train.algorithms` registry entry (docs/architecture.md, "Add a loss").
"""

import os

from postrain.train import config as base


def get_config(arg: str | None = None):
  default = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py")
  return base.load_config_file(default, ",".join(filter(None, ["algorithm=gmpo", arg])))
