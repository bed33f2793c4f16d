"""Unbiased pass@k against brute-force enumeration of k-subsets."""

import itertools

import numpy as np
import pytest

from postrain import tasks


def _brute_force(n: int, c: int, k: int) -> float:
  samples = [True] * c + [False] * (n - c)
  subsets = list(itertools.combinations(range(n), k))
  return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


def test_matches_enumeration():
  for n in range(1, 9):
    for c in range(n + 1):
      for k in range(1, n + 1):
        assert tasks.pass_at_k(n, c, k) == pytest.approx(_brute_force(n, c, k), abs=1e-12), (
          n,
          c,
          k,
        )


def test_vectorised_and_limits():
  n = np.array([10, 10, 10, 64])
  c = np.array([0, 1, 10, 3])
  out = tasks.pass_at_k(n, c, 1)
  np.testing.assert_allclose(out, c / n)  # pass@1 is the success rate
  assert out.dtype == np.float64 and out.shape == (4,)
  np.testing.assert_allclose(tasks.pass_at_k(64, np.array([0, 64]), 64), [0.0, 1.0])
  # Large n: the product form never builds the huge binomials; 1 - C(999,10)/C(1000,10) = 10/1000.
  assert tasks.pass_at_k(1000, 1, 10) == pytest.approx(10 / 1000)


def test_bad_inputs():
  with pytest.raises(ValueError, match="num_correct"):
    tasks.pass_at_k(4, 5, 1)
  with pytest.raises(ValueError, match="exceeds"):
    tasks.pass_at_k(4, 1, 5)
  with pytest.raises(ValueError, match="`k`"):
    tasks.pass_at_k(4, 1, 0)
  with pytest.raises(TypeError, match="num_samples"):
    tasks.pass_at_k(4.0, 1, 1)
