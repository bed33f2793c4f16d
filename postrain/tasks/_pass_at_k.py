"""Unbiased pass@k (Chen et al. 2021, arXiv 2107.03374; SCRL Eq. 20)."""

from __future__ import annotations

import numpy as np


def pass_at_k(num_samples, num_correct, k: int) -> np.ndarray:
  """Unbiased pass@k estimate per problem.

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - Π_{i = n-c+1}^{n} (1 - k / i)

  computed with the product form (no huge binomials); 1.0 when n - c < k.

  Args:
    num_samples: n, int or i[P] samples drawn per problem.
    num_correct: c, int or i[P] correct samples (0 <= c <= n); broadcast against n.
    k: 1 <= k <= min(n).

  Returns:
    f64[P] (or f64[] for scalar inputs). Average over problems for the benchmark number.
  """
  n = np.asarray(num_samples)
  c = np.asarray(num_correct)
  for name, x in (("num_samples", n), ("num_correct", c)):
    if x.dtype.kind not in "iu":
      raise TypeError(f"`{name}` must be integers, got dtype {x.dtype}.")
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"`k` must be a positive int, got {k!r}.")
  n, c = np.broadcast_arrays(n.astype(np.int64), c.astype(np.int64))
  if np.any(c < 0) or np.any(c > n):
    raise ValueError("`num_correct` must satisfy 0 <= num_correct <= num_samples.")
  if np.any(n < k):
    raise ValueError(f"`k`={k} exceeds `num_samples` (min {int(n.min())}).")
  out = np.ones(n.shape, np.float64)
  for idx in np.ndindex(n.shape):
    ni, ci = int(n[idx]), int(c[idx])
    if ni - ci >= k:
      out[idx] = 1.0 - np.prod(1.0 - k / np.arange(ni - ci + 1, ni + 1, dtype=np.float64))
  return out
