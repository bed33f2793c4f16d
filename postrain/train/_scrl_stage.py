"""SCRL rollouts (arXiv 2605.22074): mixed groups of curriculum and original-prompt samples.

Each problem's group of G rows holds `Gc` samples of the curriculum prompt (its chain of K
verifiable subproblems, answered as `answer_k: X` lines) followed by `G - Gc` samples of the
original prompt. Curriculum rows get per-position normalised subproblem advantages written onto
their answer spans; original rows get GRPO outcome advantages (`advantages.scrl_advantages`).

In a multi-process run each process samples and scores the groups of its problems (global rows
`[i * G, (i + 1) * G)` for problem i) with the step's K columns, and builds its rows' advantages
from the all-gathered [B, K] / [B] rewards (`scrl_rl_batch(..., rows=)`).

The stage's entry points in the RL step (`_rl_step.py`): `curriculum_prompts` (prompts) and
`scrl_stage` (score + advantages).
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from postrain import advantages, tasks
from postrain.train._data import TaskData
from postrain.train._types import RLBatch


def chains_for(problems: list[tasks.Problem], num_subproblems: int) -> list[tasks.ScrlChain]:
  """The curriculum chain of each problem (a problem without one is its own 1-step chain)."""
  out = []
  for p in problems:
    chain = tasks.scrl_chain(p, num_subproblems=num_subproblems or None)
    out.append(
      chain
      if chain is not None
      else tasks.ScrlChain(p, (tasks.Subproblem(p.question, p.answer, 0),), ())
    )
  return out


def curriculum_prompt(data: TaskData, chain: tasks.ScrlChain) -> str:
  return tasks.format_scrl_prompt(chain, chat_template=data.chat_template)


def interleaved_prompts(data: TaskData, problems, chains, originals=None) -> list[list[int]]:
  """Token ids [curriculum_0, original_0, curriculum_1, ...]: sampled with n = G/2 this gives the
  mixed-group row layout. `originals`: the original prompts' token ids (e.g. SMEPO-guided ones;
  default: the problems' plain prompts)."""
  if originals is None:
    originals = [data.encode_prompt(data.prompt(p)) for p in problems]
  out = []
  for chain, original in zip(chains, originals):
    out.append(data.encode_prompt(curriculum_prompt(data, chain)))
    out.append(original)
  return out


def curriculum_prompts(
  data: TaskData, problems: list[tasks.Problem], prompts: list[list[int]], *, num_subproblems: int
) -> tuple[list[tasks.ScrlChain], list[list[int]]]:
  """The SCRL prompt stage: (each problem's chain, the interleaved [curriculum_i, original_i]
  prompts, sampled with n = G/2 each). `prompts`: the original prompts (e.g. SMEPO-guided)."""
  chains = chains_for(problems, num_subproblems)
  return chains, interleaved_prompts(data, problems, chains, originals=prompts)


def scrl_stage(
  data: TaskData,
  out,
  texts: list[str],
  problems: list[tasks.Problem],
  chains: list[tasks.ScrlChain],
  *,
  rl: mlc.ConfigDict,
  mesh,
  timeout_s: float,
  rows: slice,
  num_rows: int,
) -> tuple[RLBatch, dict[str, float], np.ndarray, np.ndarray, tasks.VerifierStats]:
  """The SCRL score + advantage stage of one step on this process's groups (global rows `rows`
  of `num_rows`): subproblem rewards of the curriculum rows, outcome rewards of the rest, span
  advantages over the whole (all-gathered) batch.

  Returns (this process's rows of the batch, metrics, the original rows' rewards of the whole
  batch, every row's response length, verifier stats).
  """
  g, total = rl.group_size, num_rows // rl.group_size
  lengths = np.asarray(out.lengths).astype(np.int32)
  k = mesh.max_over_processes(max(c.num_subproblems for c in chains))
  sub, outcome, span_ids, fmt, _, vstats = scrl_batch_rewards(
    data, out, texts, problems, chains, group_size=g, timeout_s=timeout_s, num_subproblems=k
  )
  everyone = mesh.gather_rows(
    {"rewards": outcome, "lengths": lengths, "sub": sub, "format_ok": fmt}, num_rows
  )
  is_curr = np.tile(np.arange(g) < g // 2, total)
  batch, metrics, rewards = scrl_rl_batch(
    out,
    everyone["sub"],
    everyone["rewards"],
    span_ids,
    everyone["format_ok"],
    is_curr,
    rl=rl,
    rows=rows,
  )
  return batch, metrics, rewards, everyone["lengths"], vstats


def _token_offsets(tokenizer, ids: list[int]) -> list[tuple[int, int]]:
  """Character (start, end) of each token in `decode(ids)`, from decoded prefixes."""
  offsets, prev = [], 0
  for t in range(1, len(ids) + 1):
    end = len(tokenizer.decode(ids[:t]))
    offsets.append((prev, end))
    prev = end
  return offsets


def scrl_batch_rewards(
  data: TaskData,
  out,
  texts: list[str],
  problems,
  chains,
  *,
  group_size: int,
  timeout_s: float,
  num_subproblems: int | None = None,
):
  """Subproblem rewards, outcome rewards, span ids and format flags of a mixed-group rollout.

  `num_subproblems`: the reward columns K (default: the longest of `chains`); a process scoring
  its share of a step passes the step's K, so its rows have the one-process run's columns.

  Returns (sub_rewards f32[B, K], outcome f32[B], span_ids i32[B, T], format_ok bool[B],
  is_curriculum bool[B], verifier stats).
  """
  half = group_size // 2
  b, t = out.tokens.shape
  rows_chain = [c for c in chains for _ in range(group_size)]
  is_curr = np.tile(np.arange(group_size) < half, len(problems))
  k_max = max(c.num_subproblems for c in chains) if num_subproblems is None else num_subproblems
  curr_idx = np.flatnonzero(is_curr)
  orig_idx = np.flatnonzero(~is_curr)
  sub = np.zeros((b, k_max), np.float32)
  fmt = np.zeros(b, bool)
  sub_r, fmt_c, stats = tasks.score_subproblems_batch(
    data.task,
    [rows_chain[i] for i in curr_idx],
    [texts[i] for i in curr_idx],
    num_subproblems=k_max,
    timeout_s=timeout_s,
  )
  sub[curr_idx], fmt[curr_idx] = sub_r, fmt_c
  outcome = np.zeros(b, np.float32)
  orig_r, stats_o = tasks.score_batch(
    data.task,
    [rows_chain[i].problem for i in orig_idx],
    [texts[i] for i in orig_idx],
    mode=data.extract,
    max_chars=data.extract_max_chars,
    timeout_s=timeout_s,
  )
  outcome[orig_idx] = orig_r
  span_ids = np.full((b, t), -1, np.int32)
  tokens, mask = np.asarray(out.tokens), np.asarray(out.response_mask)
  eos = data.tokenizer.eos_id
  for i in curr_idx:
    chain = rows_chain[i]
    spans = tasks.scrl_char_spans(texts[i], chain.num_subproblems)
    if spans is None:
      continue
    cols = [c for c in np.flatnonzero(mask[i]) if int(tokens[i, c]) != eos]
    ids = tasks.token_span_ids(
      spans, _token_offsets(data.tokenizer, [int(tokens[i, c]) for c in cols])
    )
    pad = k_max - chain.num_subproblems  # left-padded reward columns of a shorter chain
    span_ids[i, cols] = np.where(ids >= 0, ids + pad, -1)
  return sub, outcome, span_ids, fmt, is_curr, stats.merge(stats_o)


def scrl_rl_batch(
  out, sub, outcome, span_ids, fmt, is_curr, *, rl: mlc.ConfigDict, rows: slice | None = None
):
  """The update batch and metrics of an SCRL step (token advantages [B, T]).

  `rows` (a process's share of the step): `out` and `span_ids` hold rows `rows` of the step's
  batch, `sub`, `outcome`, `fmt` and `is_curr` all B rows (all-gathered). The advantages are
  computed over the whole batch with the other rows' spans and masks empty (a row's token
  advantages depend only on its own spans and mask and on the group / batch statistics of the
  gathered rewards), then cut to `rows`; so the rows and the metrics equal a one-process run's
  ("response_len" is then the mean over `out`'s rows only).
  """
  mask = out.response_mask.astype(jnp.float32)
  span_all, mask_all = np.asarray(span_ids), mask
  if rows is not None:
    b = np.shape(outcome)[0]
    span_all = np.full((b, span_all.shape[1]), -1, np.int32)
    span_all[rows] = span_ids
    mask_all = jnp.zeros((b, mask.shape[1]), jnp.float32).at[rows].set(mask)
  adv, scrl_metrics = advantages.scrl_advantages(
    jnp.asarray(sub),
    jnp.asarray(outcome),
    jnp.asarray(span_all),
    mask_all,
    group_size=rl.group_size,
    num_curriculum=rl.group_size // 2,
    format_ok=jnp.asarray(fmt),
    scale=rl.adv_scale,
  )
  local_outcome = outcome if rows is None else outcome[rows]
  batch = RLBatch.from_rollout(
    out,
    loss_mask=mask,
    advantages=adv if rows is None else adv[rows],
    rewards=jnp.asarray(local_outcome),
  )
  orig = outcome[~is_curr]
  metrics = {
    "reward_mean": float(orig.mean()),
    "reward_std": float(orig.std()),
    "scrl_final_correct": float(sub[is_curr, -1].mean()),
    "scrl_format_ok": float(fmt[is_curr].mean()),
    "response_len": float(np.mean(np.asarray(out.lengths))),
    **{f"scrl_{k}": float(v) for k, v in scrl_metrics.items()},
  }
  metrics["zero_variance_frac"] = metrics.get("scrl_outcome_zero_variance_frac", 0.0)
  return batch, metrics, orig
