"""Policy losses: pure, jit/vmap/grad-safe functions returning `(loss, aux)`.

`ppo_clip` (GRPO / DAPO / GSPO / GSPO-token), `cispo`, `sapo`, `gmpo`, `conspo` (+ its
`margin_schedule`), per-token `kl_penalty` estimators, `entropy_bonus`, and the shared
`aggregate` used by every loss; on-policy distillation losses (reverse KL, sampled-token OPD,
generalised JSD, top-k + tail bucket).
"""

from postrain.losses._aggregation import AGG_MODES, aggregate
from postrain.losses._conspo import conspo, margin_schedule, sequence_scores
from postrain.losses._distillation import (
  add_tail_bucket,
  ema_update,
  full_vocab_divergence,
  generalized_jsd,
  jsd_loss,
  kl_divergence,
  match_vocab,
  opd_pg_loss,
  opd_token_rewards,
  reverse_kl_loss,
  topk_jsd_loss,
  topk_logprobs,
  topk_tail_loss,
)
from postrain.losses._kl import KL_KINDS, entropy_bonus, kl_penalty
from postrain.losses._ppo import LEVELS, ppo_clip
from postrain.losses._variants import cispo, gmpo, sapo

__all__ = [
  "AGG_MODES",
  "KL_KINDS",
  "LEVELS",
  "add_tail_bucket",
  "aggregate",
  "cispo",
  "conspo",
  "ema_update",
  "entropy_bonus",
  "full_vocab_divergence",
  "generalized_jsd",
  "gmpo",
  "jsd_loss",
  "kl_divergence",
  "kl_penalty",
  "margin_schedule",
  "match_vocab",
  "opd_pg_loss",
  "opd_token_rewards",
  "ppo_clip",
  "reverse_kl_loss",
  "sapo",
  "sequence_scores",
  "topk_jsd_loss",
  "topk_logprobs",
  "topk_tail_loss",
]
