"""GRACE: step-level scores from gradient alignment and trajectory consistency (arXiv 2605.13130).

Representation-level proxy (§2.3, Eqs. 9–12), from one forward pass and no backward pass. The
upstream gradient of token t's cross-entropy at the hidden state that predicts it is

  u_t = ∂L_t/∂h_{t-1} = W_out (p_t − y_t)                              u: [B, T, D]

(p_t = softmax(h_{t-1} W_out), y_t = one_hot(tokens_t); column 0 has no predictor and is 0). A
segment is represented by the token mean of its u_t, g(T_k) = (1/|T_k|) Σ_{t∈T_k} u_t, and

  A_k^ans  = cos(g_k, g_ans)
  A_k^hist = cos(g_k, r_k),   r_k = Normalize(Σ_{j<k} ω_{k,j} g_j),  ω uniform over earlier steps
  Score_k  = A_k^ans for the first step,  α A_k^ans + (1 − α) A_k^hist afterwards  (α = 0.7)
  V(z)     = (1/K) Σ_k Score_k                                          (Eq. 13)

Steps are the segment ids 0..K-1 that have at least one token; "first" and "earlier" refer to
those non-empty steps. ω acts on the raw g_j as Eq. 12 is written (`normalize_history=False`);
`normalize_history=True` normalises each g_j first (the other reading, see the note §6).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from postrain import _validation as V


class GraceScores(NamedTuple):
  """GRACE outputs for a batch.

  step_scores: f32[B, K] Score_k (0 for empty steps).
  step_valid: bool[B, K] step k has at least one token.
  value: f32[B] V(z), the mean over valid steps (0 for a sample without steps).
  has_steps: bool[B] the sample has at least one step; select with `valid=has_steps`.
  """

  step_scores: jax.Array
  step_valid: jax.Array
  value: jax.Array
  has_steps: jax.Array


def _upstream_from_logits(logits: jax.Array, targets: jax.Array, w_out: jax.Array) -> jax.Array:
  p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  w = w_out.astype(jnp.float32)
  # p @ W_outᵀ − W_outᵀ[y]: avoids materialising the one-hot [.., V].
  return jnp.einsum("...v,dv->...d", p, w) - jnp.take(w.T, targets, axis=0)


def upstream_gradients(
  hidden: jax.Array,
  tokens: jax.Array,
  w_out: jax.Array,
  *,
  logits: jax.Array | None = None,
) -> jax.Array:
  """u_t = W_out (softmax(ℓ_{t-1}) − one_hot(tokens_t)), the proxy of arXiv 2605.13130 Eq. 11.

  u[:, t] is ∂(−log p(tokens_t | tokens_<t)) / ∂hidden[:, t-1] for a linear head
  ℓ = hidden @ w_out; u[:, 0] = 0. Materialises the float32 logits [B, T, V]: score long traces
  or large vocabularies in small batches.

  Args:
    hidden: [B, T, D] final hidden states (after the final norm).
    tokens: i32[B, T] the token ids (targets are tokens[:, 1:]).
    w_out: [D, V] output projection (`model.output_embedding()`).
    logits: optional [B, T, V] logits to use instead of hidden @ w_out (e.g. with a soft cap).

  Returns:
    f32[B, T, D].
  """
  V.check_rank("hidden", hidden, 3)
  V.check_floating("hidden", hidden)
  b, t, d = np.shape(hidden)
  V.check_rank("w_out", w_out, 2)
  V.check_floating("w_out", w_out)
  if np.shape(w_out)[0] != d:
    raise ValueError(f"`w_out` must have shape (D={d}, V), got {np.shape(w_out)}.")
  V.check_shape("tokens", tokens, (b, t), like="hidden[..., 0]")
  if jnp.issubdtype(jnp.result_type(tokens), jnp.floating):
    raise TypeError("`tokens` must be an integer array.")
  if logits is None:
    logits = jnp.einsum("btd,dv->btv", hidden.astype(jnp.float32), w_out.astype(jnp.float32))
  else:
    V.check_floating("logits", logits)
    V.check_shape("logits", logits, (b, t, np.shape(w_out)[1]), like="hidden/w_out")
  u = _upstream_from_logits(logits[:, :-1], tokens[:, 1:], w_out)
  return jnp.concatenate([jnp.zeros((b, 1, d), jnp.float32), u], axis=1)


def _cos(a: jax.Array, b: jax.Array, eps: float) -> jax.Array:
  num = jnp.sum(a * b, axis=-1)
  den = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
  return num / jnp.maximum(den, eps)


def grace_scores_from_upstream(
  u: jax.Array,
  segment_ids: jax.Array,
  answer_mask: jax.Array,
  *,
  num_steps: int,
  alpha: float = 0.7,
  normalize_history: bool = False,
  eps: float = 1e-12,
) -> GraceScores:
  """GRACE step scores and sample values from upstream gradients (arXiv 2605.13130 Eqs. 11–13).

  Args:
    u: f32[B, T, D] upstream gradients (`upstream_gradients`).
    segment_ids: i32[B, T] step index 0..K-1 of each token; -1 (or any value outside [0, K))
      for prompt, answer and padding tokens.
    answer_mask: [B, T] nonzero on the answer span T_ans.
    num_steps: K, static maximum number of steps.
    alpha: α, weight of the answer alignment (1 − α on the history consistency).
    normalize_history: normalise each g_j before averaging the history (default False: Eq. 12).
    eps: floor of the cosine denominators (a zero vector gives cosine 0).

  Returns:
    GraceScores. Padding, prompt tokens and the order of non-step positions do not matter; only
    the tokens of each segment and their order of steps do.
  """
  V.check_rank("u", u, 3)
  V.check_floating("u", u)
  b, t, _ = np.shape(u)
  V.check_shape("segment_ids", segment_ids, (b, t), like="u[..., 0]")
  V.check_shape("answer_mask", answer_mask, (b, t), like="u[..., 0]")
  if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
    raise ValueError(f"`num_steps` must be a positive int, got {num_steps!r}.")
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"`alpha` must be in [0, 1], got {alpha}.")
  u = jnp.asarray(u, jnp.float32)
  onehot = (jnp.asarray(segment_ids)[..., None] == jnp.arange(num_steps)).astype(jnp.float32)
  counts = onehot.sum(1)  # [B, K]
  g = jnp.einsum("btk,btd->bkd", onehot, u) / jnp.maximum(counts, 1.0)[..., None]
  ans = (jnp.asarray(answer_mask) != 0).astype(jnp.float32)
  g_ans = jnp.einsum("bt,btd->bd", ans, u) / jnp.maximum(ans.sum(1), 1.0)[:, None]
  valid = counts > 0

  a_ans = _cos(g, g_ans[:, None, :], eps)
  # History direction: exclusive cumulative sum over earlier valid steps. Uniform ω only
  # rescales it, which the cosine ignores.
  h = g / jnp.maximum(jnp.linalg.norm(g, axis=-1, keepdims=True), eps) if normalize_history else g
  h = jnp.where(valid[..., None], h, 0.0)
  hist = jnp.cumsum(h, axis=1) - h
  n_prev = jnp.cumsum(valid, axis=1) - valid
  a_hist = _cos(g, hist, eps)
  score = jnp.where(n_prev > 0, alpha * a_ans + (1.0 - alpha) * a_hist, a_ans)
  score = jnp.where(valid, score, 0.0)
  n_valid = valid.sum(1)
  value = score.sum(1) / jnp.maximum(n_valid, 1)
  return GraceScores(score, valid, value, n_valid > 0)


def grace_scores(
  hidden: jax.Array,
  tokens: jax.Array,
  w_out: jax.Array,
  segment_ids: jax.Array,
  answer_mask: jax.Array,
  *,
  num_steps: int,
  alpha: float = 0.7,
  normalize_history: bool = False,
  logits: jax.Array | None = None,
) -> GraceScores:
  """GRACE from hidden states: `upstream_gradients` then `grace_scores_from_upstream`.

  Shapes: hidden [B, T, D], tokens i32[B, T], w_out [D, V], segment_ids i32[B, T] (step of the
  *target* token t; -1 elsewhere), answer_mask [B, T]. The first scored token needs a real
  predecessor (a prompt or BOS token), as u_t is read from hidden[:, t-1].
  """
  u = upstream_gradients(hidden, tokens, w_out, logits=logits)
  return grace_scores_from_upstream(
    u,
    segment_ids,
    answer_mask,
    num_steps=num_steps,
    alpha=alpha,
    normalize_history=normalize_history,
  )
