"""Fixtures for the loss tests: float64 mode and small ragged batches with clipping in range."""

import jax
import numpy as np
import pytest


@pytest.fixture
def x64():
  """Runs the test with jax_enable_x64 (restored afterwards)."""
  with jax.enable_x64(True):
    yield


def make_batch(seed=0, B=6, T=7, dtype=np.float32, spread=0.3, empty_row=True):
  """Ragged [B, T] batch: log-probs, old log-probs off by ~`spread` (ratios straddle the clip
  bounds), per-sequence advantages of both signs, a 0/1 mask with one all-masked row."""
  rng = np.random.default_rng(seed)
  logp = -np.abs(rng.normal(size=(B, T))) - 0.1
  old = logp + spread * rng.normal(size=(B, T))
  lengths = rng.integers(1, T + 1, size=B)
  if empty_row:
    lengths[-1] = 0
  mask = (np.arange(T)[None, :] < lengths[:, None]).astype(dtype)
  adv = rng.normal(size=B)
  return logp.astype(dtype), old.astype(dtype), adv.astype(dtype), mask


@pytest.fixture
def batch():
  return make_batch
