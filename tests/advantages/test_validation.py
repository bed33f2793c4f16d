"""Bad input raises ValueError / TypeError naming the argument (never an XLA error)."""

import jax.numpy as jnp
import pytest

from postrain import advantages as adv

R8 = jnp.zeros(8)
LP = jnp.zeros((4, 5))
M = jnp.ones((4, 5))
SPAN = jnp.zeros((4, 5), jnp.int32)
SUB = jnp.zeros((4, 3))

CASES = [
  # group_normalized / rloo / zero-variance helpers
  (lambda: adv.group_normalized(jnp.zeros(8, jnp.int32), group_size=4), TypeError, "rewards"),
  (lambda: adv.group_normalized(jnp.zeros((2, 4)), group_size=4), ValueError, "rewards"),
  (lambda: adv.group_normalized(R8, group_size=3), ValueError, "group_size"),
  (lambda: adv.group_normalized(R8, group_size=0), ValueError, "group_size"),
  # A group of one: every advantage would be 0 (issue 15 item 11).
  (lambda: adv.group_normalized(R8, group_size=1), ValueError, "group_size"),
  (lambda: adv.group_normalized(R8, group_size=2.0), TypeError, "group_size"),
  (lambda: adv.group_normalized(R8, group_size=4, scale="std"), ValueError, "scale"),
  (lambda: adv.group_normalized(R8, group_size=4, eps=-1.0), ValueError, "eps"),
  (lambda: adv.rloo(jnp.zeros(8, jnp.int32), group_size=4), TypeError, "rewards"),
  (lambda: adv.rloo(R8, group_size=3), ValueError, "group_size"),
  (lambda: adv.zero_variance_groups(jnp.zeros((2, 4)), group_size=4), ValueError, "rewards"),
  (lambda: adv.zero_variance_fraction(R8, group_size=5), ValueError, "group_size"),
  # SCRL
  (
    lambda: adv.scrl_progress_rewards(jnp.zeros((4, 3), jnp.int32)),
    TypeError,
    "subproblem_rewards",
  ),
  (lambda: adv.scrl_progress_rewards(jnp.zeros(4)), ValueError, "subproblem_rewards"),
  (lambda: adv.scrl_progress_rewards(SUB, jnp.ones(3, bool)), ValueError, "format_ok"),
  (lambda: adv.scrl_progress_rewards(SUB, correction="gate"), ValueError, "correction"),
  (lambda: adv.scrl_subproblem_advantages(SUB, group_size=3), ValueError, "group_size"),
  (
    lambda: adv.scrl_subproblem_advantages(jnp.zeros((4, 3), jnp.int32), group_size=2),
    TypeError,
    "progress_rewards",
  ),
  (lambda: adv.scrl_token_advantages(SUB, SPAN.astype(jnp.float32), M), TypeError, "span_ids"),
  (lambda: adv.scrl_token_advantages(SUB, SPAN, jnp.ones((4, 6))), ValueError, "mask"),
  (
    lambda: adv.scrl_token_advantages(SUB, jnp.zeros((3, 5), jnp.int32), jnp.ones((3, 5))),
    ValueError,
    "span_ids",
  ),
  (lambda: adv.scrl_token_advantages(SUB, SPAN[0], M[0]), ValueError, "span_ids"),
  (
    lambda: adv.scrl_advantages(SUB, jnp.zeros(3), SPAN, M, group_size=2),
    ValueError,
    "outcome_rewards",
  ),
  (
    lambda: adv.scrl_advantages(SUB, jnp.zeros(4, jnp.int32), SPAN, M, group_size=2),
    TypeError,
    "outcome_rewards",
  ),
  (lambda: adv.scrl_advantages(SUB, jnp.zeros(4), SPAN, M, group_size=3), ValueError, "group_size"),
  (
    lambda: adv.scrl_advantages(SUB, jnp.zeros(4), SPAN, M, group_size=2, num_curriculum=3),
    ValueError,
    "num_curriculum",
  ),
  (
    lambda: adv.scrl_advantages(SUB, jnp.zeros(4), SPAN, M, group_size=2, num_curriculum=1.0),
    TypeError,
    "num_curriculum",
  ),
  (
    lambda: adv.scrl_advantages(SUB, jnp.zeros(4), SPAN, M, group_size=2, scale="x"),
    ValueError,
    "scale",
  ),
  # temporal
  (lambda: adv.temporal_window(jnp.ones(5), 0.5), ValueError, "mask"),
  (lambda: adv.temporal_window(M, jnp.int32(3)), TypeError, "progress"),
  (lambda: adv.temporal_window(M, jnp.zeros(2)), ValueError, "progress"),
  (lambda: adv.temporal_window(M, 0.5, schedule="cosine"), ValueError, "schedule"),
  (lambda: adv.temporal_window(M, 0.5, start=0.8, end=0.8), ValueError, "start"),
  (lambda: adv.temporal_window(M, 0.5, rho0=1.5), ValueError, "rho0"),
  (lambda: adv.schedule_ratio(0.5, gamma=0.0), ValueError, "gamma"),
  (lambda: adv.forking_token_window(jnp.zeros((4, 5), jnp.int32), M, 0.5), TypeError, "entropy"),
  (lambda: adv.forking_token_window(LP, jnp.ones((4, 6)), 0.5), ValueError, "mask"),
  (lambda: adv.entropy_shaped_advantages(jnp.zeros(3), LP, M, 0.5), ValueError, "advantages"),
  # importance weights
  (lambda: adv.rollout_correction(jnp.zeros((4, 5), jnp.int32), LP, M), TypeError, "logp_train"),
  (lambda: adv.rollout_correction(LP, jnp.zeros((4, 6)), M), ValueError, "logp_rollout"),
  (lambda: adv.rollout_correction(LP, LP, jnp.ones((4, 6))), ValueError, "mask"),
  (lambda: adv.rollout_correction(LP[0], LP[0], M[0]), ValueError, "logp_train"),
  (lambda: adv.rollout_correction(LP, LP, M, level="seq"), ValueError, "level"),
  (lambda: adv.rollout_correction(LP, LP, M, mode="clip"), ValueError, "mode"),
  (lambda: adv.rollout_correction(LP, LP, M, lo=2.0, hi=1.0), ValueError, "lo"),
  (lambda: adv.sequence_kl(LP, LP, M, estimator="k4"), ValueError, "estimator"),
  (lambda: adv.sequence_kl(LP, LP, M, reduce="max"), ValueError, "reduce"),
  (lambda: adv.sequence_kl(LP, jnp.zeros((4, 5), jnp.int32), M), TypeError, "generator_logp"),
  (lambda: adv.ftis_correction(LP, LP, jnp.zeros(5), M), ValueError, "advantages"),
  (lambda: adv.ftis_correction(LP, LP, jnp.zeros(4, jnp.int32), M), TypeError, "advantages"),
  (lambda: adv.ftis_correction(LP, LP, jnp.zeros(4), M, cap=0.0), ValueError, "cap"),
  (
    lambda: adv.ftis_correction(LP, LP, jnp.zeros(4), M, kl_estimator="k9"),
    ValueError,
    "kl_estimator",
  ),
  (lambda: adv.ftis_correction(LP, LP, jnp.zeros(4), M, level="x"), ValueError, "level"),
]


@pytest.mark.parametrize(("call", "error", "name"), CASES)
def test_bad_input_raises_naming_the_argument(call, error, name):
  with pytest.raises(error, match=f"`{name}`"):
    call()
