"""Policy losses: pure, jit/vmap/grad-safe functions returning `(loss, aux)`.

`ppo_clip` (GRPO / DAPO / GSPO / GSPO-token), `cispo`, `sapo`, `gmpo`, `conspo` (+ its
`margin_schedule`), per-token `kl_penalty` estimators, `entropy_bonus`, and the shared
`aggregate` used by every loss.
"""

from postrain.losses._aggregation import AGG_MODES, aggregate
from postrain.losses._conspo import conspo, margin_schedule, sequence_scores
from postrain.losses._kl import KL_KINDS, entropy_bonus, kl_penalty
from postrain.losses._ppo import LEVELS, ppo_clip
from postrain.losses._variants import cispo, gmpo, sapo

__all__ = [
  "AGG_MODES",
  "KL_KINDS",
  "LEVELS",
  "aggregate",
  "cispo",
  "conspo",
  "entropy_bonus",
  "gmpo",
  "kl_penalty",
  "margin_schedule",
  "ppo_clip",
  "sapo",
  "sequence_scores",
]
