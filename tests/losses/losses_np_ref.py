"""Independent float64 numpy references for `postrain.losses`, written as explicit loops from the
papers' equations (GSPO 2507.18071, ConSPO 2605.12969, MiniMax-M1 2506.13585, SAPO 2511.20347,
GMPO 2507.20673, Schulman's KL estimators). Deliberately naive: no vectorisation shared with the
implementation."""

from __future__ import annotations

import math

import numpy as np


def _f64(*xs):
  return [None if x is None else np.asarray(x, np.float64) for x in xs]


def aggregate(per_token, mask, agg, max_len=None):
  per_token, mask = _f64(per_token, mask)
  B, T = per_token.shape
  if agg == "token_mean":
    num = sum(mask[i, t] * per_token[i, t] for i in range(B) for t in range(T) if mask[i, t] != 0)
    return num / max(mask.sum(), 1.0)
  rows = []
  for i in range(B):
    n = mask[i].sum()
    if n <= 0:
      continue
    s = sum(mask[i, t] * per_token[i, t] for t in range(T) if mask[i, t] != 0)
    if agg == "seq_mean_token_mean":
      rows.append(s / n)
    elif agg == "seq_mean_token_sum":
      rows.append(s)
    elif agg == "seq_mean_token_sum_norm":
      rows.append(s / max_len)
    else:
      raise ValueError(agg)
  return sum(rows) / max(len(rows), 1)


def _adv(adv, i, t):
  return adv[i] if adv.ndim == 1 else adv[i, t]


def seq_log_ratio(logp, old, mask):
  logp, old, mask = _f64(logp, old, mask)
  out = np.zeros(logp.shape[0])
  for i in range(logp.shape[0]):
    n = mask[i].sum()
    out[i] = sum(mask[i, t] * (logp[i, t] - old[i, t]) for t in range(logp.shape[1])) / max(n, 1.0)
  return out


def ppo_clip(
  logp,
  old,
  adv,
  mask,
  *,
  eps_low,
  eps_high,
  level,
  agg,
  dual_clip=None,
  is_weights=None,
  max_len=None,
):
  """Loss and aux from GRPO Eq. 2 / GSPO Eq. 5 & 13 (value of GSPO-token = GSPO)."""
  logp, old, adv, mask, w = _f64(logp, old, adv, mask, is_weights)
  B, T = logp.shape
  log_s = seq_log_ratio(logp, old, mask)
  per_token = np.zeros((B, T))
  ratio = np.zeros((B, T))
  low = np.zeros((B, T))
  high = np.zeros((B, T))
  dual = np.zeros((B, T))
  for i in range(B):
    for t in range(T):
      rho = math.exp(logp[i, t] - old[i, t]) if level == "token" else math.exp(log_s[i])
      a = _adv(adv, i, t)
      clipped = min(max(rho, 1 - eps_low), 1 + eps_high)
      obj = min(rho * a, clipped * a)
      if dual_clip is not None and a < 0:
        dual[i, t] = float(dual_clip * a > obj)
        obj = max(obj, dual_clip * a)
      per_token[i, t] = -obj * (1.0 if w is None else w[i, t])
      ratio[i, t] = rho
      low[i, t] = float(a < 0 and rho < 1 - eps_low)
      high[i, t] = float(a > 0 and rho > 1 + eps_high)
  kl = 0.5 * (logp - old) ** 2
  aux = {
    "clip_frac_low": aggregate(low, mask, "token_mean"),
    "clip_frac_high": aggregate(high, mask, "token_mean"),
    "dual_clip_frac": aggregate(dual, mask, "token_mean"),
    "ratio_mean": aggregate(ratio, mask, "token_mean"),
    "approx_kl": aggregate(kl, mask, "token_mean"),
  }
  return aggregate(per_token, mask, agg, max_len), aux


def agg_coef(mask, agg, max_len=None):
  """∂ loss / ∂ ℓ_{i,t} for a per-token loss ℓ (the aggregation weights)."""
  (mask,) = _f64(mask)
  B, T = mask.shape
  coef = np.zeros((B, T))
  n_rows = sum(1 for i in range(B) if mask[i].sum() > 0)
  for i in range(B):
    n = mask[i].sum()
    for t in range(T):
      if agg == "token_mean":
        coef[i, t] = mask[i, t] / max(mask.sum(), 1.0)
      elif n > 0:
        per_row = {"seq_mean_token_mean": 1.0 / n, "seq_mean_token_sum": 1.0}.get(agg, None)
        per_row = 1.0 / max_len if per_row is None else per_row
        coef[i, t] = mask[i, t] * per_row / max(n_rows, 1)
  return coef


def gspo_token_grad(logp, old, adv, mask, *, eps_low, eps_high, agg, max_len=None):
  """GSPO-token gradient (Eq. 17 with clipping): coef·(−A_{i,t})·s_i on unclipped tokens."""
  logp, old, adv, mask = _f64(logp, old, adv, mask)
  s = np.exp(seq_log_ratio(logp, old, mask))
  coef = agg_coef(mask, agg, max_len)
  g = np.zeros(logp.shape)
  for i in range(logp.shape[0]):
    for t in range(logp.shape[1]):
      a = _adv(adv, i, t)
      active = (a > 0 and s[i] < 1 + eps_high) or (a < 0 and s[i] > 1 - eps_low)
      g[i, t] = coef[i, t] * (-a) * s[i] * active
  return g


def cispo(logp, old, adv, mask, *, eps_high, eps_low=None, agg="token_mean", max_len=None):
  """MiniMax-M1 Eq. 4: −sg(clip(r)) · A · logp per token."""
  logp, old, adv, mask = _f64(logp, old, adv, mask)
  per_token = np.zeros(logp.shape)
  for i in range(logp.shape[0]):
    for t in range(logp.shape[1]):
      r = math.exp(logp[i, t] - old[i, t])
      r_hat = min(r, 1 + eps_high) if eps_low is None else min(max(r, 1 - eps_low), 1 + eps_high)
      per_token[i, t] = -r_hat * _adv(adv, i, t) * logp[i, t]
  return aggregate(per_token, mask, agg, max_len)


def sapo(
  logp, old, adv, mask, *, tau_pos=1.0, tau_neg=1.05, agg="seq_mean_token_mean", max_len=None
):
  """SAPO: −(4/τ) σ(τ(r − 1)) · A per token."""
  logp, old, adv, mask = _f64(logp, old, adv, mask)
  per_token = np.zeros(logp.shape)
  for i in range(logp.shape[0]):
    for t in range(logp.shape[1]):
      r = math.exp(logp[i, t] - old[i, t])
      a = _adv(adv, i, t)
      tau = tau_pos if a > 0 else tau_neg
      per_token[i, t] = -(4.0 / tau) / (1.0 + math.exp(-tau * (r - 1.0))) * a
  return aggregate(per_token, mask, agg, max_len)


def gmpo(
  logp, old, adv, mask, *, eps_low=0.4, eps_high=0.4, agg="seq_mean_token_mean", max_len=None
):
  """GMPO Eq. 4: −sgn(A)·Π_t |min(ρ_t A, clip(ρ_t, e^−ε_l, e^ε_h) A)|^{1/|o|} per sequence."""
  logp, old, adv, mask = _f64(logp, old, adv, mask)
  B, T = logp.shape
  per_row = np.zeros((B, 1))
  for i in range(B):
    n = mask[i].sum()
    a = adv[i] if adv.ndim == 1 else sum(mask[i, t] * adv[i, t] for t in range(T)) / max(n, 1.0)
    log_prod = 0.0
    for t in range(T):
      if mask[i, t] == 0:
        continue
      rho = math.exp(logp[i, t] - old[i, t])
      clipped = min(max(rho, math.exp(-eps_low)), math.exp(eps_high))
      term = abs(min(rho * a, clipped * a))
      log_prod += mask[i, t] * math.log(term / abs(a)) if a != 0 else 0.0
    geo = math.exp(log_prod / max(n, 1.0)) * abs(a)
    per_row[i, 0] = -math.copysign(geo, a) if a != 0 else 0.0
  return aggregate(np.broadcast_to(per_row, (B, T)), mask, agg, max_len)


def kl_penalty(logp, ref, mask, kind):
  """Schulman's estimators of KL(π_θ ‖ π_ref) per token, r = π_ref/π_θ."""
  logp, ref, mask = _f64(logp, ref, mask)
  out = np.zeros(logp.shape)
  for i in range(logp.shape[0]):
    for t in range(logp.shape[1]):
      if mask[i, t] == 0:
        continue
      log_r = ref[i, t] - logp[i, t]
      if kind == "k1":
        out[i, t] = -log_r
      elif kind == "k2":
        out[i, t] = 0.5 * log_r**2
      else:  # k3 and the value of k3+
        out[i, t] = math.exp(log_r) - 1.0 - log_r
  return out


def conspo(logp, mask, rewards, *, group_size, tau, margin, pos_threshold=0.5):
  """ConSPO Eq. 13 (τ prefactor, margin on the positive), mean over groups with contrast."""
  logp, mask, rewards = _f64(logp, mask, rewards)
  B, T = logp.shape
  scores = [
    sum(mask[i, t] * logp[i, t] for t in range(T)) / max(mask[i].sum(), 1.0) for i in range(B)
  ]
  group_losses = []
  for g0 in range(0, B, group_size):
    rows = [i for i in range(g0, g0 + group_size) if mask[i].sum() > 0]
    pos = [i for i in rows if rewards[i] > pos_threshold]
    neg = [i for i in rows if rewards[i] <= pos_threshold]
    if not pos or not neg:
      continue
    terms = []
    for i in pos:
      numer = math.exp((scores[i] - margin) / tau)
      denom = numer + sum(math.exp(scores[j] / tau) for j in neg)
      terms.append(-tau * math.log(numer / denom))
    group_losses.append(sum(terms) / len(pos))
  n_groups = B // group_size
  loss = sum(group_losses) / max(len(group_losses), 1)
  return loss, len(group_losses) / n_groups, scores
