"""Hypothesis properties: finite outputs for degenerate groups, empty rows and huge log-probs."""

import functools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postrain import advantages as adv

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
B, T, G, K = 8, 6, 4, 3

# Fixed shapes and jitted functions: every example reuses one compilation.
group_norm = {
  s: jax.jit(functools.partial(adv.group_normalized, group_size=G, scale=s))
  for s in ("group", "batch", "none")
}
rloo = jax.jit(functools.partial(adv.rloo, group_size=G))
scrl = jax.jit(functools.partial(adv.scrl_advantages, group_size=G))
window = jax.jit(adv.temporal_window)
rollout = {
  lv: jax.jit(functools.partial(adv.rollout_correction, level=lv))
  for lv in ("token", "sequence", "geometric")
}
ftis = jax.jit(functools.partial(adv.ftis_correction, kl_threshold=50.0))

reward_values = st.floats(min_value=-1e6, max_value=1e6, width=32)
masks = hnp.arrays(np.bool_, (B, T))
huge_logps = hnp.arrays(
  np.float32,
  (B, T),
  elements=st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.sampled_from([float(np.float32(x)) for x in (-3e38, 3e38, -1e30, 1e30, -88.0, 0.0)]),
  ),
)


@SETTINGS
@given(value=reward_values, rest=hnp.arrays(np.float32, (B - G,), elements=reward_values))
def test_all_equal_groups_are_exactly_zero(value, rest):
  r = jnp.asarray(np.concatenate([np.full(G, value, np.float32), rest]))
  for fn in [*group_norm.values(), rloo]:
    out = np.asarray(fn(r))
    assert np.all(np.isfinite(out))
    assert np.all(out[:G] == 0.0)


@SETTINGS
@given(r=hnp.arrays(np.float32, (B,), elements=reward_values))
def test_group_advantages_finite_and_centred(r):
  for scale, fn in group_norm.items():
    out = np.asarray(fn(jnp.asarray(r)), np.float64)
    assert np.all(np.isfinite(out))
    if scale != "batch":
      scale_ref = np.abs(out).max() + 1.0
      assert np.all(np.abs(out.reshape(-1, G).sum(1)) <= 1e-4 * scale_ref * G)


@SETTINGS
@given(
  sub=hnp.arrays(np.float32, (B, K), elements=st.sampled_from([0.0, 1.0])),
  out=hnp.arrays(np.float32, (B,), elements=st.sampled_from([0.0, 1.0])),
  span=hnp.arrays(np.int32, (B, T), elements=st.integers(-1, K)),
  mask=masks,
  fmt=hnp.arrays(np.bool_, (B,)),
)
def test_scrl_finite_and_zero_off_mask(sub, out, span, mask, fmt):
  a, metrics = scrl(
    jnp.asarray(sub),
    jnp.asarray(out),
    jnp.asarray(span),
    jnp.asarray(mask),
    format_ok=jnp.asarray(fmt),
  )
  a = np.asarray(a)
  assert np.all(np.isfinite(a))
  assert np.all(a[~mask] == 0.0)
  assert all(np.isfinite(float(v)) for v in metrics.values())


@SETTINGS
@given(mask=masks, progress=st.floats(0.0, 1.0, width=32))
def test_window_is_a_nonempty_suffix_of_the_mask(mask, progress):
  w = np.asarray(window(jnp.asarray(mask), jnp.float32(progress)))
  assert np.all(np.isfinite(w)) and np.all(w <= mask)
  for i in range(B):
    response = np.flatnonzero(mask[i])
    kept = np.flatnonzero(w[i])
    assert (len(kept) >= 1) == (len(response) >= 1)
    np.testing.assert_array_equal(kept, response[len(response) - len(kept) :])


@SETTINGS
@given(a=huge_logps, b=huge_logps, mask=masks)
def test_rollout_correction_finite_for_huge_logps(a, b, mask):
  for fn in rollout.values():
    w = np.asarray(fn(jnp.asarray(a), jnp.asarray(b), jnp.asarray(mask)))
    assert np.all(np.isfinite(w))
    assert np.all((w >= 0) & (w <= 2.0))
    assert np.all(w[~mask] == 0.0)


@SETTINGS
@given(
  a=huge_logps,
  b=huge_logps,
  mask=masks,
  advs=hnp.arrays(np.float32, (B,), elements=st.floats(-5, 5, width=32)),
)
def test_ftis_finite_for_huge_logps(a, b, mask, advs):
  res = ftis(jnp.asarray(a), jnp.asarray(b), jnp.asarray(advs), jnp.asarray(mask))
  for leaf in jax.tree.leaves(res):
    assert np.all(np.isfinite(np.asarray(leaf, np.float64)))
  assert np.all(np.asarray(res.is_weights) <= 2.0)
  kept = np.asarray(res.advantages)
  assert np.all((kept == advs) | ((kept == 0) & (advs < 0)))
  assert not np.any(np.asarray(res.filtered)[~mask.any(1)])  # all-masked rows have KL 0
