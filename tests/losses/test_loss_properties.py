"""Property tests (hypothesis): degenerate masks, equal rewards, huge log-probs, bf16 inputs.

Every loss and its gradient must stay finite. Shapes are fixed so each jitted function compiles
once per dtype; hypothesis varies the values.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from postrain import losses

B, T, G = 4, 5, 2

LOSSES = {
  **{
    f"ppo_clip[{level}]": functools.partial(
      losses.ppo_clip, eps_low=0.2, eps_high=0.28, level=level, agg=agg, dual_clip=3.0, max_len=T
    )
    for level, agg in zip(
      losses.LEVELS, ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
    )
  },
  "cispo": functools.partial(losses.cispo, eps_high=2.0, agg="seq_mean_token_sum"),
  "sapo": losses.sapo,
  "gmpo": losses.gmpo,
}


@functools.cache
def _policy_fn(name):
  return jax.jit(jax.value_and_grad(lambda lp, *a: LOSSES[name](lp, *a), has_aux=True))


@functools.cache
def _conspo_fn():
  return jax.jit(
    jax.value_and_grad(lambda lp, m, r: losses.conspo(lp, m, r, group_size=G), has_aux=True)
  )


@functools.cache
def _kl_fn(kind):
  return jax.jit(
    jax.value_and_grad(lambda lp, ref, m: jnp.sum(losses.kl_penalty(lp, ref, m, kind=kind)))
  )


def _finite(tree):
  return all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in jax.tree.leaves(tree))


@st.composite
def batches(draw):
  """Mask rows: all-masked / zero-length, prefix or random; log-prob scale up to 1e4."""
  scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e4]))
  seed = draw(st.integers(0, 2**31 - 1))
  rng = np.random.default_rng(seed)
  row_kind = draw(
    st.lists(st.sampled_from(["empty", "prefix", "random", "full"]), min_size=B, max_size=B)
  )
  mask = np.zeros((B, T), np.float32)
  for i, kind in enumerate(row_kind):
    if kind == "prefix":
      mask[i, : rng.integers(1, T + 1)] = 1.0
    elif kind == "random":
      mask[i] = rng.random(T) < 0.5
    elif kind == "full":
      mask[i] = 1.0
  logp = (-np.abs(rng.normal(size=(B, T))) * scale).astype(np.float32)
  old = (-np.abs(rng.normal(size=(B, T))) * scale).astype(np.float32)
  if draw(st.booleans()):
    old = logp.copy()  # on-policy
  rewards = draw(
    st.sampled_from(
      [np.zeros(B), np.ones(B), np.full(B, 0.5), rng.integers(0, 2, size=B).astype(float)]
    )
  ).astype(np.float32)
  adv = (rewards - rewards.mean()).astype(np.float32)  # all-equal rewards: zero advantages
  if draw(st.booleans()):
    adv = np.broadcast_to(adv[:, None], (B, T)).copy()
  dtype = draw(st.sampled_from([jnp.float32, jnp.bfloat16]))
  return jnp.asarray(logp, dtype), jnp.asarray(old, dtype), adv, mask, rewards


@settings(max_examples=30, deadline=None)
@given(batches())
def test_policy_losses_finite(batch):
  logp, old, adv, mask, _ = batch
  for name in LOSSES:
    (loss, aux), grad = _policy_fn(name)(logp, old, adv, mask)
    assert _finite((loss, aux, grad)), name
    assert grad.dtype == logp.dtype
    np.testing.assert_array_equal(np.asarray(grad, np.float32)[mask == 0], 0.0)
    if not np.any(adv):
      assert float(loss) == 0.0 or name == "cispo"  # CISPO's loss value carries logp itself
      np.testing.assert_array_equal(np.asarray(grad, np.float32), 0.0)


@settings(max_examples=30, deadline=None)
@given(batches())
def test_conspo_and_kl_finite(batch):
  logp, old, _, mask, rewards = batch
  (loss, aux), grad = _conspo_fn()(logp, mask, rewards)
  assert _finite((loss, aux, grad))
  if np.all(rewards > 0.5) or np.all(rewards <= 0.5):
    assert float(loss) == 0.0
    np.testing.assert_array_equal(np.asarray(grad, np.float32), 0.0)
  for kind in losses.KL_KINDS:
    value, grad = _kl_fn(kind)(logp, old, mask)
    assert _finite((value, grad)), kind
