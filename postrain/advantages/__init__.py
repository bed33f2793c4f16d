"""Advantage estimators and token weights for RL post-training (pure, jit/vmap/grad-safe).

Group-relative outcome advantages (GRPO, Dr.GRPO, RLOO), SCRL subproblem-curriculum advantages
(arXiv 2605.22074), temporal credit schedules (arXiv 2605.25381), F-TIS off-policy weights and
filtering (arXiv 2605.22537) and rollout-engine importance correction. Batches are flat `[B]` /
`[B, T]` with the `group_size` rollouts of each prompt contiguous.
"""

from postrain.advantages._group import (
  group_normalized,
  rloo,
  zero_variance_fraction,
  zero_variance_groups,
)
from postrain.advantages._importance import (
  FTISResult,
  ftis_correction,
  rollout_correction,
  sequence_kl,
)
from postrain.advantages._release import (
  bic_change_point,
  candidate_margin,
  release_mask,
  release_weights,
  segment_scores,
  teachability_release,
  teacher_margin,
)
from postrain.advantages._scrl_advantages import (
  scrl_advantages,
  scrl_curriculum_rows,
  scrl_progress_rewards,
  scrl_progress_stats,
  scrl_subproblem_advantages,
  scrl_token_advantages,
)
from postrain.advantages._temporal import (
  entropy_shaped_advantages,
  forking_token_window,
  schedule_ratio,
  temporal_window,
)

__all__ = [
  "FTISResult",
  "bic_change_point",
  "candidate_margin",
  "entropy_shaped_advantages",
  "forking_token_window",
  "ftis_correction",
  "group_normalized",
  "release_mask",
  "release_weights",
  "rloo",
  "rollout_correction",
  "schedule_ratio",
  "scrl_advantages",
  "scrl_curriculum_rows",
  "scrl_progress_rewards",
  "scrl_progress_stats",
  "scrl_subproblem_advantages",
  "scrl_token_advantages",
  "segment_scores",
  "sequence_kl",
  "teachability_release",
  "teacher_margin",
  "temporal_window",
  "zero_variance_fraction",
  "zero_variance_groups",
]
