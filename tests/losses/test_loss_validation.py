"""Bad input raises ValueError/TypeError naming the argument, never an XLA shape error."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from postrain import losses

B, T = 4, 3
LP = np.zeros((B, T), np.float32)
M = np.ones((B, T), np.float32)
ADV = np.zeros(B, np.float32)
R = np.zeros(B, np.float32)


def ppo(**over):
  kw = {"logp": LP, "old_logp": LP, "advantages": ADV, "mask": M, "eps_low": 0.2, "eps_high": 0.2}
  kw.update(over)
  return losses.ppo_clip(
    kw.pop("logp"), kw.pop("old_logp"), kw.pop("advantages"), kw.pop("mask"), **kw
  )


PPO_CASES = [
  ({"logp": LP[0]}, ValueError, "logp"),
  ({"logp": LP[None]}, ValueError, "logp"),
  ({"logp": LP.astype(np.int32)}, TypeError, "logp"),
  ({"old_logp": LP[:, :2]}, ValueError, "old_logp"),
  ({"old_logp": LP.astype(np.int32)}, TypeError, "old_logp"),
  ({"advantages": np.zeros(B + 1, np.float32)}, ValueError, "advantages"),
  ({"advantages": np.zeros((B, T + 1), np.float32)}, ValueError, "advantages"),
  ({"advantages": np.zeros((B, T, 1), np.float32)}, ValueError, "advantages"),
  ({"mask": M[:, :2]}, ValueError, "mask"),
  ({"mask": M.astype(np.complex64)}, TypeError, "mask"),
  ({"is_weights": M[:2]}, ValueError, "is_weights"),
  ({"is_weights": M.astype(np.int32)}, TypeError, "is_weights"),
  ({"level": "seq"}, ValueError, "level"),
  ({"agg": "mean"}, ValueError, "agg"),
  ({"agg": "seq_mean_token_sum_norm"}, ValueError, "max_len"),
  ({"agg": "seq_mean_token_sum_norm", "max_len": 0}, ValueError, "max_len"),
  ({"agg": "seq_mean_token_sum_norm", "max_len": jnp.float32(3)}, TypeError, "max_len"),
  ({"dual_clip": 1.0}, ValueError, "dual_clip"),
  ({"eps_low": -0.1}, ValueError, "eps_low"),
  # 1 - eps_low < 0: a bound no ratio can cross (issue 15 item 11; eps_low=1, bound 0, turns the
  # lower clip off and is allowed, see test_ppo_token_bounds).
  ({"eps_low": 1.5}, ValueError, "eps_low"),
  ({"eps_high": jnp.float32(0.2)}, TypeError, "eps_high"),
]


@pytest.mark.parametrize(("over", "error", "name"), PPO_CASES)
def test_ppo_clip_bad_input(over, error, name):
  with pytest.raises(error, match=f"`{name}`"):
    ppo(**over)


def test_ppo_clip_bad_input_under_jit():
  with pytest.raises(ValueError, match="`old_logp`"):
    jax.jit(lambda lp, old: ppo(logp=lp, old_logp=old)[0])(LP, LP[:, :2])


VARIANTS = {
  "cispo": lambda lp, old, a, m, **k: losses.cispo(lp, old, a, m, eps_high=0.2, **k),
  "sapo": losses.sapo,
  "gmpo": losses.gmpo,
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variants_bad_input(name):
  fn = VARIANTS[name]
  with pytest.raises(TypeError, match="`logp`"):
    fn(LP.astype(np.int32), LP, ADV, M)
  with pytest.raises(ValueError, match="`old_logp`"):
    fn(LP, LP[:2], ADV, M)
  with pytest.raises(ValueError, match="`advantages`"):
    fn(LP, LP, ADV[:2], M)
  with pytest.raises(ValueError, match="`mask`"):
    fn(LP, LP, ADV, M[:, :1])
  with pytest.raises(ValueError, match="`agg`"):
    fn(LP, LP, ADV, M, agg="sum")
  with pytest.raises(ValueError, match="`max_len`"):
    fn(LP, LP, ADV, M, agg="seq_mean_token_sum_norm")


def test_cispo_eps_low_above_one_is_refused():
  with pytest.raises(ValueError, match="`eps_low`"):
    losses.cispo(LP, LP, ADV, M, eps_high=0.2, eps_low=1.5)


def test_sapo_gmpo_hyperparameters():
  with pytest.raises(ValueError, match="`tau_neg`"):
    losses.sapo(LP, LP, ADV, M, tau_neg=0.0)
  with pytest.raises(ValueError, match="`eps_low`"):
    losses.gmpo(LP, LP, ADV, M, eps_low=-1.0)


CONSPO_CASES = [
  ((LP.astype(np.int32), M, R), {}, TypeError, "logp"),
  ((LP[0], M, R), {}, ValueError, "logp"),
  ((LP, M[:2], R), {}, ValueError, "mask"),
  ((LP, M, R[:3]), {}, ValueError, "rewards"),
  ((LP, M, R[:, None]), {}, ValueError, "rewards"),
  ((LP, M, R), {"group_size": 3}, ValueError, "group_size"),
  ((LP, M, R), {"group_size": 0}, ValueError, "group_size"),
  ((LP, M, R), {"group_size": 2.0}, TypeError, "group_size"),
  ((LP, M, R), {"group_size": 2, "tau": 0.0}, ValueError, "tau"),
  ((LP, M, R), {"group_size": 2, "margin": -0.1}, ValueError, "margin"),
  ((LP, M, R), {"group_size": 2, "margin": jnp.zeros(2)}, ValueError, "margin"),
]


@pytest.mark.parametrize(("args", "kw", "error", "name"), CONSPO_CASES)
def test_conspo_bad_input(args, kw, error, name):
  kw = {"group_size": 2, **kw}
  with pytest.raises(error, match=f"`{name}`"):
    losses.conspo(*args, **kw)


def test_kl_aggregate_entropy_schedule_bad_input():
  with pytest.raises(ValueError, match="`kind`"):
    losses.kl_penalty(LP, LP, M, kind="k4")
  with pytest.raises(TypeError, match="`ref_logp`"):
    losses.kl_penalty(LP, LP.astype(np.int32), M, kind="k1")
  with pytest.raises(ValueError, match="`ref_logp`"):
    losses.kl_penalty(LP, LP[:, :1], M, kind="k1")
  with pytest.raises(ValueError, match="`mask`"):
    losses.kl_penalty(LP, LP, M[:1], kind="k2")
  with pytest.raises(ValueError, match="`per_token`"):
    losses.aggregate(LP[0], M[0], agg="token_mean")
  with pytest.raises(ValueError, match="`mask`"):
    losses.aggregate(LP, M[:, :2], agg="token_mean")
  with pytest.raises(ValueError, match="`agg`"):
    losses.aggregate(LP, M, agg="tokens")
  with pytest.raises(TypeError, match="`entropy`"):
    losses.entropy_bonus(LP.astype(np.int32), M)
  with pytest.raises(ValueError, match="`kind`"):
    losses.margin_schedule(1, 10, kind="step")
  with pytest.raises(ValueError, match="`warmup_frac`"):
    losses.margin_schedule(1, 10, warmup_frac=1.5)
  with pytest.raises(ValueError, match="`total_steps`"):
    losses.margin_schedule(1, 0)
  with pytest.raises(ValueError, match="`step`"):
    losses.margin_schedule(jnp.zeros(3), 10)
