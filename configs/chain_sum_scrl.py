"""SCRL on chain sums: mixed groups of subproblem-curriculum and original-prompt samples.

Each chain sum's intermediate results become verifiable subproblems (the last one is the original
problem); half of each group answers the curriculum prompt with `answer_k:` lines and gets
per-position normalised span advantages, the other half answers the original prompt (GRPO).

  python -m postrain.train --config configs/chain_sum_scrl.py --workdir runs/chain_sum_scrl
  python -m postrain.train --config configs/chain_sum_scrl.py:scale=smoke --workdir runs/smoke_scrl
"""

import os

from postrain.train import config as base


def get_config(arg: str | None = None):
  default = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py")
  c = base.load_config_file(default, ",".join(filter(None, ["algorithm=scrl", arg])))
  # Curriculum completions are longer than plain ones: one `answer_k:` line per subproblem.
  c.sft.max_len = max(c.sft.max_len, 128)
  c.rl.max_new_tokens = max(c.rl.max_new_tokens, 56)
  c.rl.cache_size = max(c.rl.cache_size, 192)
  return c
