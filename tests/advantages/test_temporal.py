"""Temporal credit scheduling (arXiv 2605.25381) against numpy loops from the note's algorithm."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from postrain import advantages as adv
from postrain import losses

SCHEDULES = ["linear", "sigmoid", "gamma"]


def np_ratio(progress, schedule, rho0=0.99, start=0.0, end=0.8, gamma=2.0, sharpness=8.0):
  p = min(max((progress - start) / (end - start), 0.0), 1.0)
  if schedule == "linear":
    return rho0 * (1 - p)
  if schedule == "sigmoid":

    def sig(q):
      return 1.0 / (1.0 + math.exp(sharpness * (q - 0.5)))

    return rho0 * (sig(p) - sig(1.0)) / (sig(0.0) - sig(1.0))
  return (rho0 * (1 - p)) ** gamma


def np_window(mask, rho):
  """TP-Schedule: P_i = min(floor(rho L_i), L_i - 1); keep the response tokens at index >= P_i."""
  out = np.zeros(mask.shape)
  for i in range(mask.shape[0]):
    length = int(np.count_nonzero(mask[i]))
    if rho > 0 and length:
      # The float32 test must not sit on a floor() boundary, where rounding decides.
      assert abs(rho * length - round(rho * length)) > 1e-4 or rho * length < 0.5
    prefix = min(math.floor(rho * length), length - 1)
    seen = 0
    for t in range(mask.shape[1]):
      if mask[i, t] != 0:
        if seen >= prefix:
          out[i, t] = mask[i, t]
        seen += 1
  return out


# Left padding, holes (e.g. masked tool output), an empty row, a one-token row, fractional weights.
MASK = np.array(
  [
    [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    [1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0],
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    [0.5, 1, 1, 0.25, 1, 1, 1, 0, 0, 0, 0, 0],
  ]
)
PROGRESS = [0.0, 0.13, 0.37, 0.55, 0.71]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedule_ratio_matches_formula(prec, schedule):
  dtype, tol = prec
  for progress in [0.0, 0.1, 0.33, 0.5, 0.79, 0.8, 0.95, 1.0]:
    rho = adv.schedule_ratio(dtype(progress), schedule=schedule)
    assert rho.dtype == dtype
    np.testing.assert_allclose(rho, np_ratio(progress, schedule), atol=tol)
  rho = adv.schedule_ratio(
    dtype(0.6), schedule=schedule, rho0=0.5, start=0.2, end=0.9, gamma=1.5, sharpness=4.0
  )
  np.testing.assert_allclose(rho, np_ratio(0.6, schedule, 0.5, 0.2, 0.9, 1.5, 4.0), atol=tol)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedule_endpoints_and_monotone(schedule):
  grid = np.linspace(0.0, 1.0, 41, dtype=np.float32)
  rhos = np.asarray(
    jax.vmap(functools.partial(adv.schedule_ratio, schedule=schedule))(jnp.asarray(grid))
  )
  start_value = 0.99**2 if schedule == "gamma" else 0.99  # the code raises rho0 to gamma too
  np.testing.assert_allclose(rhos[0], start_value, rtol=1e-6)
  np.testing.assert_allclose(rhos[grid >= 0.8], 0.0, atol=1e-7)
  assert np.all(np.diff(rhos) <= 1e-7)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_window_matches_loop(prec, schedule):
  dtype, tol = prec
  for progress in PROGRESS:
    out = adv.temporal_window(jnp.asarray(MASK, dtype), dtype(progress), schedule=schedule)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, np_window(MASK, np_ratio(progress, schedule)), atol=tol)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_window_at_end_of_schedule_equals_mask(schedule):
  for progress in [0.8, 0.9, 1.0]:
    out = adv.temporal_window(jnp.asarray(MASK, jnp.float32), progress, schedule=schedule)
    np.testing.assert_array_equal(out, MASK.astype(np.float32))
  bool_mask = jnp.asarray(MASK > 0)
  np.testing.assert_array_equal(adv.temporal_window(bool_mask, 1.0), (MASK > 0).astype(np.float32))


def test_window_start_trains_a_suffix_of_at_least_one_token():
  out = np.asarray(adv.temporal_window(jnp.asarray(MASK > 0), 0.0))
  for i in range(MASK.shape[0]):
    length = np.count_nonzero(MASK[i])
    kept = np.flatnonzero(out[i])
    assert len(kept) == (max(length - math.floor(0.99 * length), 1) if length else 0)
    response = np.flatnonzero(MASK[i])
    np.testing.assert_array_equal(kept, response[len(response) - len(kept) :])  # a suffix


def test_kept_count_is_monotone_in_progress():
  mask = jnp.asarray(np.ones((3, 50)) * (np.arange(50) < np.array([[50], [23], [7]])))
  counts = [np.asarray(adv.temporal_window(mask, p)).sum(1) for p in np.linspace(0, 1, 21)]
  assert np.all(np.diff(np.stack(counts), axis=0) >= 0)


def test_traced_progress_jit_and_vmap():
  mask = jnp.asarray(MASK, jnp.float32)
  jitted = jax.jit(adv.temporal_window, static_argnames=("schedule",))
  for progress in PROGRESS:
    np.testing.assert_array_equal(
      jitted(mask, jnp.float32(progress)), adv.temporal_window(mask, progress)
    )
  grid = jnp.asarray(PROGRESS, jnp.float32)
  batched = jax.vmap(lambda p: adv.temporal_window(mask, p))(grid)
  for k, progress in enumerate(PROGRESS):
    np.testing.assert_array_equal(batched[k], adv.temporal_window(mask, progress))


def test_padding_equals_slicing():
  padded = np.concatenate([np.zeros((6, 3)), MASK, np.zeros((6, 5))], axis=1)
  for progress in PROGRESS:
    out = np.asarray(adv.temporal_window(jnp.asarray(padded, jnp.float32), progress))
    np.testing.assert_array_equal(
      out[:, 3:-5], adv.temporal_window(jnp.asarray(MASK, jnp.float32), progress)
    )
    assert np.all(out[:, :3] == 0) and np.all(out[:, -5:] == 0)


def test_window_as_loss_mask_equals_slicing_the_suffix():
  """A token-mean loss with the window as mask equals the loss on each row's trained suffix."""
  rng = np.random.default_rng(0)
  mask = np.ones((4, 16)) * (np.arange(16) < np.array([[16], [11], [5], [1]]))
  logp = rng.normal(-1.0, 0.3, (4, 16))
  old = logp + rng.normal(0.0, 0.1, (4, 16))
  a = np.array([1.0, -0.5, 2.0, -1.0])
  window = np.asarray(adv.temporal_window(jnp.asarray(mask, jnp.float32), 0.37))

  ppo = jax.jit(functools.partial(losses.ppo_clip, eps_low=0.2, eps_high=0.2))

  def loss(lp, op, aa, m):
    return float(ppo(*(jnp.asarray(x, jnp.float32) for x in (lp, op, aa, m)))[0])

  for i in range(4):
    kept = np.flatnonzero(window[i])
    assert len(kept) >= 1
    sl = slice(kept[0], kept[-1] + 1)
    full = loss(logp[i : i + 1], old[i : i + 1], a[i : i + 1], window[i : i + 1])
    sliced = loss(logp[i : i + 1, sl], old[i : i + 1, sl], a[i : i + 1], np.ones((1, len(kept))))
    np.testing.assert_allclose(full, sliced, rtol=1e-6)


def np_forking(entropy, mask, rho):
  out = np.zeros(mask.shape)
  for i in range(mask.shape[0]):
    idx = [t for t in range(mask.shape[1]) if mask[i, t] != 0]
    k = math.ceil((1 - rho) * len(idx))
    top = sorted(idx, key=lambda t: (-entropy[i, t], t))[:k]
    for t in top:
      out[i, t] = mask[i, t]
  return out


def test_forking_window_matches_loop():
  ent = np.random.default_rng(1).random(MASK.shape).astype(np.float32)
  for progress in [0.0, 0.37, 0.55, 0.9]:
    rho = np_ratio(progress, "linear")
    out = adv.forking_token_window(jnp.asarray(ent), jnp.asarray(MASK, jnp.float32), progress)
    np.testing.assert_array_equal(out, np_forking(ent, MASK, rho).astype(np.float32))
  np.testing.assert_array_equal(
    adv.forking_token_window(jnp.asarray(ent), jnp.asarray(MASK, jnp.float32), 1.0), MASK
  )


def test_entropy_shaped_advantages():
  rng = np.random.default_rng(2)
  ent = rng.random(MASK.shape) * 3
  a = np.array([1.0, -0.5, 0.0, 2.0, -2.0, 0.3])
  for progress in [0.0, 0.37, 0.9]:
    rho = np_ratio(progress, "linear")
    out = np.asarray(
      adv.entropy_shaped_advantages(jnp.asarray(a), jnp.asarray(ent), jnp.asarray(MASK), progress)
    )
    expected = np.zeros(MASK.shape)
    for i in range(MASK.shape[0]):
      for t in range(MASK.shape[1]):
        expected[i, t] = (a[i] + rho * min(0.4 * ent[i, t], abs(a[i]) / 2.0)) * MASK[i, t]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    nz = (MASK > 0) & (a[:, None] != 0)
    assert np.all(np.sign(out[nz]) == np.sign(np.broadcast_to(a[:, None], MASK.shape)[nz]))
  # No gradient flows into the entropy.
  g = jax.grad(
    lambda e: jnp.sum(adv.entropy_shaped_advantages(jnp.asarray(a), e, jnp.asarray(MASK), 0.0))
  )(jnp.asarray(ent))
  np.testing.assert_array_equal(g, 0.0)
