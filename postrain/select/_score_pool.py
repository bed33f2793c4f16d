"""Scoring a pool of demonstrations with HES or GRACE and writing the selected top fraction.

The pool is (prompt, reference solution) pairs: the training split of the run's task, or a
GSM8K-format JSONL file. Each pair is scored by one teacher-forced forward pass of the scoring
model over `prompt + solution + eos` (only solution tokens count):

- HES (arXiv 2605.22389): the sum of the top ρ of the solution's token entropies;
- GRACE (arXiv 2605.13130): the mean step score of the solution, steps = its lines (or the
  `grace.step_rule` reading), the answer span = its final answer line.

The top `fraction` by score is written as GSM8K-format JSONL (and as a tfds array_record
dataset), next to every score, a histogram PNG and the intrinsic metrics (arXiv 2605.13290) of
the pool and of the selection.
"""

from __future__ import annotations

import functools
import json
import math
import os
from fractions import Fraction
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
from flax import nnx

from postrain import selection, tasks
from postrain import train as train_lib
from postrain.select import _load, _scoring
from postrain.tasks import _solutions

SCORERS = ("hes", "grace")
ROUNDINGS = ("round", "ceil", "floor")
MODEL_SOURCES = ("checkpoint", "hf", "gguf")
DATA_SOURCES = ("task", "jsonl")


def validate(c: mlc.ConfigDict) -> None:
  """Raises ValueError naming the key for values `run` cannot use (before any model loads)."""

  def need(ok: bool, key: str, msg: str) -> None:
    if not ok:
      raise ValueError(f"config.{key}: {msg}")

  need(c.scorer in SCORERS, "scorer", f"must be one of {SCORERS}, got {c.scorer!r}")
  need(0.0 < c.fraction <= 1.0, "fraction", f"must be in (0, 1], got {c.fraction}")
  need(c.rounding in ROUNDINGS, "rounding", f"must be one of {ROUNDINGS}, got {c.rounding!r}")
  need(
    c.model.source in MODEL_SOURCES,
    "model.source",
    f"must be one of {MODEL_SOURCES}, got {c.model.source!r}",
  )
  need(
    c.model.source != "checkpoint" or bool(c.checkpoint),
    "checkpoint",
    "a postrain workdir is required when model.source == 'checkpoint'",
  )
  need(
    c.model.source == "checkpoint" or bool(c.model.path),
    "model.path",
    "is required for imported weights (model.source 'hf' or 'gguf')",
  )
  need(c.data.source in DATA_SOURCES, "data.source", f"must be one of {DATA_SOURCES}")
  need(
    c.data.source == "jsonl" or c.model.source == "checkpoint",
    "data.source",
    "'task' needs a checkpoint (the run's task); use a JSONL file with imported weights",
  )
  need(
    c.data.source != "jsonl" or bool(c.data.jsonl_path),
    "data.jsonl_path",
    "is required when data.source == 'jsonl'",
  )
  need(c.batch_size >= 1, "batch_size", "must be >= 1")
  need(c.max_len >= 8, "max_len", "must be >= 8")
  need(0.0 < c.hes.ratio <= 1.0, "hes.ratio", "must be in (0, 1]")
  need(0.0 <= c.grace.alpha <= 1.0, "grace.alpha", "must be in [0, 1]")
  need(c.grace.max_steps >= 1, "grace.max_steps", "must be >= 1")
  need(bool(c.output.name.isidentifier()), "output.name", "must be a Python identifier")


def num_selected(n: int, fraction: float, rounding: str = "round") -> int:
  """k = round(fraction · n) (half up; "ceil"/"floor" on request), at least 1 when n > 0.

  The fraction is read as its decimal literal, so 0.2 · 10 is exactly 2.
  """
  x = Fraction(repr(float(fraction))) * n
  if rounding == "ceil":
    k = math.ceil(x)
  elif rounding == "floor":
    k = math.floor(x)
  else:
    k = math.floor(x + Fraction(1, 2))
  return min(n, max(k, 1 if n else 0))


# -- the pool ------------------------------------------------------------------------------------


def pool_problems(c: mlc.ConfigDict, scorer: _load.Scorer) -> list[tasks.Problem]:
  """The problems to score: the run's training split, or every row of a JSONL file."""
  if c.data.source == "jsonl":
    problems = tasks.load_gsm8k_jsonl(c.data.jsonl_path)
  else:
    problems = list(scorer.data.train)
  if c.data.max_examples > 0:
    problems = problems[: c.data.max_examples]
  if not problems:
    raise ValueError("config.data: the pool is empty")
  return problems


def _target(data: train_lib.TaskData, problem: tasks.Problem) -> tuple[str, str] | None:
  return tasks.sft_example(problem, chat_template=data.chat_template, instruction=data.instruction)


def _batches(n: int, size: int):
  for start in range(0, n, size):
    yield start, min(start + size, n)


# -- scoring -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _hes_fn(graphdef, ratio: float, min_tokens: int, rounding: str):
  @jax.jit
  def fn(params, rest, tokens, valid, mask):
    model = nnx.merge(graphdef, params, rest)
    return _scoring.model_hes(
      model, tokens, mask, valid=valid, ratio=ratio, min_tokens=min_tokens, rounding=rounding
    )

  return fn


@functools.lru_cache(maxsize=8)
def _grace_fn(graphdef, num_steps: int, alpha: float, normalize_history: bool):
  @jax.jit
  def fn(params, rest, tokens, valid, segment_ids, answer_mask):
    model = nnx.merge(graphdef, params, rest)
    out = _scoring.model_grace_scores(
      model,
      tokens,
      segment_ids,
      answer_mask,
      num_steps=num_steps,
      valid=valid,
      alpha=alpha,
      normalize_history=normalize_history,
    )
    return out.value, out.has_steps

  return fn


def hes_batch(data: train_lib.TaskData, problems: list[tasks.Problem], max_len: int):
  """The teacher-forced batch HES scores: `train_lib.sft_batch` rows (prompt + solution + eos, mask
  on solution and eos), i.e. exactly what SFT trains on."""
  return train_lib.sft_batch(data, problems, max_len)


def grace_row(
  data: train_lib.TaskData,
  problem: tasks.Problem,
  *,
  length: int,
  step_rule: str,
  max_steps: int,
) -> dict[str, np.ndarray] | None:
  """GRACE inputs of one demonstration (None when it has no solution, step or fitting row).

  The solution's final answer line is the answer span; the lines before it, split by
  `step_rule` ("line": one step per line, the reading used here, since the paper's rule is in
  an unread appendix), are the steps, steps past `max_steps` are merged into the last one. Each
  step is tokenised on its own with its leading newline, so token boundaries can differ
  slightly from tokenising the whole solution at once.
  """
  example = _target(data, problem)
  if example is None:
    return None
  prompt, target = example
  lead = "\n" if target.startswith("\n") else ""
  lines = target[len(lead) :].split("\n")
  body, answer = "\n".join(lines[:-1]), lines[-1]
  steps = selection.split_steps(body, rule=step_rule) if body else []
  if not steps:
    return None
  if len(steps) > max_steps:
    steps = [*steps[: max_steps - 1], "\n".join(steps[max_steps - 1 :])]
  tok = data.tokenizer
  step_ids = [tok.encode((lead if k == 0 else "\n") + s) for k, s in enumerate(steps)]
  answer_ids = [*tok.encode("\n" + answer), tok.eos_id]
  try:
    return selection.pack_steps(
      data.encode_prompt(prompt),
      step_ids,
      answer_ids,
      length=length,
      pad_id=max(tok.pad_id, 0),
    )
  except ValueError:  # does not fit in max_len
    return None


def score_pool(
  c: mlc.ConfigDict, scorer: _load.Scorer, problems: list[tasks.Problem]
) -> tuple[np.ndarray, np.ndarray]:
  """(scores f32[N], scorable bool[N]) of every problem, with a progress bar.

  A problem without a reference solution (or, for GRACE, without steps or a fitting row) is not
  scorable: its score is NaN and it is never selected.
  """
  from tqdm.auto import tqdm

  data, n, bs = scorer.data, len(problems), c.batch_size
  scores = np.full(n, np.nan, np.float32)
  ok = np.zeros(n, bool)
  bar = tqdm(total=n, desc=f"score ({c.scorer})", disable=not c.progress_bar, dynamic_ncols=True)
  for start, end in _batches(n, bs):
    chunk = problems[start:end]
    if c.scorer == "hes":
      idx = [i for i, p in enumerate(chunk) if _target(data, p) is not None]
      if idx:
        rows = [chunk[i] for i in idx]
        rows += [rows[-1]] * (bs - len(rows))  # one static batch shape: one compile
        b = hes_batch(data, rows, c.max_len)
        fn = _hes_fn(scorer.graphdef, c.hes.ratio, c.hes.min_tokens, c.hes.rounding)
        out = np.asarray(fn(scorer.params, scorer.rest, b["tokens"], b["valid"], b["loss_mask"]))
        has = b["loss_mask"].sum(-1) > 0
        for j, i in enumerate(idx):
          scores[start + i], ok[start + i] = out[j], has[j]
    else:
      packed = [
        grace_row(
          data, p, length=c.max_len, step_rule=c.grace.step_rule, max_steps=c.grace.max_steps
        )
        for p in chunk
      ]
      idx = [i for i, r in enumerate(packed) if r is not None]
      if idx:
        rows = [packed[i] for i in idx]
        rows += [rows[-1]] * (bs - len(rows))
        b = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        fn = _grace_fn(scorer.graphdef, c.grace.max_steps, c.grace.alpha, c.grace.normalize_history)
        value, has = fn(
          scorer.params, scorer.rest, b["tokens"], b["valid"], b["segment_ids"], b["answer_mask"]
        )
        value, has = np.asarray(value), np.asarray(has)
        for j, i in enumerate(idx):
          scores[start + i], ok[start + i] = value[j], has[j]
    bar.update(len(chunk))
  bar.close()
  scores[~ok] = np.nan
  return scores, ok


# -- outputs -------------------------------------------------------------------------------------


def _solution_text(problem: tasks.Problem) -> str:
  """The GSM8K-format answer field: the reference steps, then `#### answer`."""
  if isinstance(problem.metadata.get("solution"), str):
    return problem.metadata["solution"]
  steps = _solutions.reference_steps(problem) or []
  return "\n".join([s.text for s in steps] + [f"#### {problem.answer}"])


def write_jsonl(path: str, problems: list[tasks.Problem], scores: np.ndarray) -> None:
  """GSM8K-format rows (readable by `tasks.load_gsm8k_jsonl`), plus id, source task and score."""
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    for p, s in zip(problems, scores):
      row = {
        "question": p.question,
        "answer": _solution_text(p),
        "id": p.id,
        "source_task": p.task,
        "score": float(s),
      }
      f.write(json.dumps(row) + "\n")
  os.replace(path + ".tmp", path)


def write_tfds(jsonl_path: str, data_dir: str, name: str) -> str:
  """The selected JSONL as a tfds array_record dataset `postrain_tasks/<name>` (split "train")."""
  path = os.path.abspath(jsonl_path)
  tasks.prepare_task_dataset(
    "jsonl",
    data_dir=data_dir,
    splits={"train": None},
    task_kwargs={"train": path, "test": path},
    name=name,
  )
  return f"postrain_tasks/{name}"


def plot_histogram(
  png_path: str, scores: np.ndarray, keep: np.ndarray, *, scorer: str, fraction: float
) -> None:
  """Histogram of all finite scores with the selected part stacked on top and the cut-off line."""
  from matplotlib.figure import Figure  # a bare Figure: no global backend switch

  finite = np.isfinite(scores)
  fig = Figure(figsize=(7, 4), dpi=110)
  ax = fig.subplots()
  if finite.any():
    bins = np.histogram_bin_edges(scores[finite], bins=40)
    ax.hist(
      [scores[finite & ~keep], scores[finite & keep]],
      bins=bins,
      stacked=True,
      label=["not selected", f"selected (top {fraction:g})"],
      color=["#9aa5b1", "#d9480f"],
    )
    if keep.any():
      ax.axvline(float(scores[keep].min()), color="k", ls="--", lw=1, label="cut-off")
  ax.set_xlabel(f"{scorer.upper()} score")
  ax.set_ylabel("examples")
  ax.set_title(f"{scorer.upper()} scores: {int(keep.sum())} of {int(finite.sum())} selected")
  ax.legend()
  fig.tight_layout()
  fig.savefig(png_path)


def _traces(data: train_lib.TaskData, problems: list[tasks.Problem]) -> tuple[list[str], list[str]]:
  pairs = [_target(data, p) for p in problems]
  return [q.question for q in problems], [t[1].strip() if t else "" for t in pairs]


def intrinsic_metrics(data: train_lib.TaskData, problems: list[tasks.Problem]) -> dict[str, float]:
  """arXiv 2605.13290 §3.2 metrics of the demonstrations (lexical embedder stand-in)."""
  queries, traces = _traces(data, problems)
  return selection.dataset_metrics(
    traces, queries=queries, embed=selection.hashed_bow_embedder(), tokenizer=data.tokenizer
  )


def run(c: mlc.ConfigDict, workdir: str, *, scorer: _load.Scorer | None = None) -> dict[str, Any]:
  """Scores the pool, selects the top fraction and writes everything under `workdir`.

  Files: `selected.jsonl` (GSM8K format), `scores.jsonl` (every problem: id, score,
  selected), `histogram.png`, `metrics.json` (counts, score summary and intrinsic metrics of the
  pool and of the selection), and with `output.tfds` the dataset under `workdir/tfds`.
  Returns the metrics dict.
  """
  validate(c)
  if scorer is None:
    if c.model.source == "checkpoint":
      scorer = _load.load_checkpoint(c.checkpoint)
    else:
      scorer = _load.load_imported(
        c.model.source, c.model.path, tokenizer_path=c.model.tokenizer_path, dtype=c.model.dtype
      )
  problems = pool_problems(c, scorer)
  scores, ok = score_pool(c, scorer, problems)
  k = num_selected(int(ok.sum()), c.fraction, c.rounding)
  keep = selection.select_top_k(np.where(ok, scores, -np.inf), k, valid=ok)
  order = np.lexsort((np.arange(len(scores)), -np.where(keep, scores, -np.inf)))[:k]
  os.makedirs(workdir, exist_ok=True)
  chosen = [problems[i] for i in order]
  out_jsonl = os.path.join(workdir, "selected.jsonl")
  write_jsonl(out_jsonl, chosen, scores[order])
  with open(os.path.join(workdir, "scores.jsonl"), "w", encoding="utf-8") as f:
    for p, s, kept in zip(problems, scores, keep):
      f.write(
        json.dumps({"id": p.id, "score": None if np.isnan(s) else float(s), "selected": bool(kept)})
        + "\n"
      )
  plot_histogram(
    os.path.join(workdir, "histogram.png"), scores, keep, scorer=c.scorer, fraction=c.fraction
  )
  finite = scores[ok]
  metrics: dict[str, Any] = {
    "scorer": c.scorer,
    "fraction": float(c.fraction),
    "checkpoint_step": scorer.step,
    "n_pool": len(problems),
    "n_scored": int(ok.sum()),
    "n_unscorable": int((~ok).sum()),
    "n_selected": int(k),
    "score": {
      "mean": float(finite.mean()) if finite.size else None,
      "std": float(finite.std()) if finite.size else None,
      "min": float(finite.min()) if finite.size else None,
      "max": float(finite.max()) if finite.size else None,
      "cutoff": float(scores[order].min()) if k else None,
    },
    "intrinsic": {
      "pool": intrinsic_metrics(scorer.data, problems),
      "selected": intrinsic_metrics(scorer.data, chosen),
    },
  }
  if c.output.tfds:
    metrics["tfds"] = write_tfds(out_jsonl, os.path.join(workdir, "tfds"), c.output.name)
  with open(os.path.join(workdir, "metrics.json"), "w", encoding="utf-8") as f:
    json.dump(metrics, f, indent=2)
  return metrics
