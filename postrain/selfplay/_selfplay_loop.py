"""The proposer/solver self-play loop (arXiv 2605.22217), runnable, on the deterministic DSL
(`config.language="dsl"`) or on Python output prediction (`"python"`).

One model plays both roles. Each step:
1. Propose: `proposals` samples of the proposer prompt (K reference tasks from the pool, then
   "program:"); each completion is parsed into (program, input).
2. Gate: `gate.mode="strict"` admits only tasks that parse and evaluate (`selfplay.dsl_gate`;
   for Python `selfplay.execution_gate`: sandboxed subprocesses with time and memory limits,
   run twice for determinism, no output leak; the executor output becomes the label); `"off"` admits every parsed proposal (a failing one
   has no label); `gate.leak_rate` ε in (0, 1) admits a rejected one with probability ε (F_ε).
   Admitted tasks enter the FIFO pool (`selfplay.admit`, duplicates not added again).
3. Solve: `solver_tasks` pool tasks (the newly admitted first, the "max_new" strategy, then
   random ones), `group_size` samples each; rewards `solver_reward="grounded"` (match the
   executor output) or `"intrinsic"` (self-consistency vote share, no ground truth).
4. Proposer reward R_P = 1 − α̂ (`proposer_reward_mode="hard"` or "medium"), α̂ the solver's
   accuracy on the proposed task against the executor output (`proposer_label="grounded"`) or
   the solver majority vote (`"intrinsic_vote"`); proposals that are malformed, rejected or
   duplicates get 0.
5. Two policy updates with the trainer's jitted RL step (`postrain.train.make_update` / `rl_loss`): the solver
   groups, then the proposer groups (group-normalised advantages within each group of G).

Metrics (JSONL + TensorBoard, as the trainer's): admission stats, pool size and collapse
indicators (`selfplay.selfplay_metrics`: unique-output rate, trivial-output rate, duplicate
rate, solver vote share and intrinsic–grounded gap), rewards, and held-out solver accuracy on
fixed generated tasks (greedy), `val/accuracy`. The model starts from scratch and is warm-started
by SFT on generated seed tasks of both roles; parameters are checkpointed with orbax at the end.

LoRA / QLoRA (`config.model.lora`, `config.model.quantize`: the trainer's keys and semantics):
the warm start and both roles' updates train only the adapters over the frozen (optionally int8 /
NF4) base, which is an argument of the compiled updates; sampling uses a merged copy
(`model.lora.sample_merged`, else adapters on the fly); the checkpoint holds only the adapters
and the base's SHA-256, and `postrain.train.load_run(workdir)` returns base + adapters merged.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import ml_collections as mlc
import numpy as np
from flax import nnx

from postrain import models, tasks
from postrain import train as train_lib
from postrain.models import tokenizers as tokenizers_lib
from postrain.sampling import Sampler
from postrain.selfplay import _dsl_tasks, _python_tasks
from postrain.tasks import selfplay
from postrain.train import TaskData
from postrain.train.config import validate_lora

GATE_MODES = ("strict", "off")
SOLVER_REWARDS = ("grounded", "intrinsic")
PROPOSER_LABELS = ("grounded", "intrinsic_vote")
LANGUAGES = ("dsl", "python")

BatchGate = Callable[[Sequence[str], Sequence[str]], list[selfplay.GateVerdict]]


class TaskFamily(NamedTuple):
  """What the loop needs of a task language: seed tasks `(n, seed) -> tasks`, the strict
  (ε = 0) batch gate `(programs, inputs) -> verdicts`, and the text formats."""

  kind: str
  seed_tasks: Callable[[int, int], list[selfplay.Task]]
  gate: BatchGate
  proposer_prompt: Callable[[list[selfplay.Task]], str]
  proposer_target: Callable[[selfplay.Task], str]
  solver_prompt: Callable[[selfplay.Task], str]
  solver_target: Callable[[selfplay.Task], str]
  parse_proposal: Callable[[str], tuple[str, str] | None]
  canonical_answer: Callable[[str | None], str | None]


def _dsl_gate(programs: Sequence[str], inputs: Sequence[str]) -> list[selfplay.GateVerdict]:
  return [selfplay.dsl_gate(p, x) for p, x in zip(programs, inputs)]


def task_family(c: mlc.ConfigDict) -> TaskFamily:
  """The task family of `c.language`: "dsl" (in-process interpreter) or "python" (sandboxed
  subprocesses with the limits `c.gate.timeout_s`, `cpu_s`, `memory_mb`, `workers` at a time,
  the determinism check `c.gate.check_determinism`)."""
  if c.language not in LANGUAGES:
    raise ValueError(f"config.language: must be one of {LANGUAGES}, got {c.language!r}")
  if c.language == "dsl":
    mod, gate = _dsl_tasks, _dsl_gate
    seeds = functools.partial(_dsl_tasks.seed_tasks, depth=c.program_depth)
  else:
    mod, g = _python_tasks, c.gate
    box = _python_tasks.sandbox_config(timeout_s=g.timeout_s, cpu_s=g.cpu_s, memory_mb=g.memory_mb)
    kw = dict(config=box, check_determinism=g.check_determinism, workers=g.workers)
    gate = functools.partial(_python_tasks.gate_batch, **kw)
    seeds = functools.partial(_python_tasks.seed_tasks, depth=c.program_depth, **kw)
  return TaskFamily(
    c.language, lambda n, seed: seeds(n, seed), gate, mod.proposer_prompt, mod.proposer_target,
    mod.solver_prompt, mod.solver_target, mod.parse_proposal, mod.canonical_answer,
  )  # fmt: skip


def validate(c: mlc.ConfigDict) -> None:
  def need(ok: bool, key: str, msg: str) -> None:
    if not ok:
      raise ValueError(f"config.{key}: {msg}")

  need(c.language in LANGUAGES, "language", f"must be one of {LANGUAGES}, got {c.language!r}")
  need(c.gate.mode in GATE_MODES, "gate.mode", f"must be one of {GATE_MODES}, got {c.gate.mode!r}")
  need(0.0 <= c.gate.leak_rate <= 1.0, "gate.leak_rate", "must be in [0, 1]")
  need(c.solver_reward in SOLVER_REWARDS, "solver_reward", f"must be one of {SOLVER_REWARDS}")
  need(c.proposer_label in PROPOSER_LABELS, "proposer_label", f"must be one of {PROPOSER_LABELS}")
  need(c.proposer_reward_mode in ("hard", "medium"), "proposer_reward_mode", "hard or medium")
  need(c.group_size >= 2, "group_size", "must be >= 2")
  need(c.proposals % c.group_size == 0, "proposals", "must be a multiple of group_size")
  need(c.solver_tasks >= 1 and c.steps >= 0 and c.sft.steps >= 0, "steps", "must be >= 0")
  need(c.cache_size > c.max_new_tokens, "cache_size", "must exceed max_new_tokens")
  if "lora" in c.model or "quantize" in c.model:  # config.model.lora / quantize: the trainer's keys
    validate_lora(c)


def gate_proposals(
  parsed: list[tuple[str, str] | None],
  *,
  mode: str,
  leak_rate: float = 0.0,
  rng: np.random.Generator | None = None,
  gate: BatchGate | None = None,
) -> tuple[list[int], list[selfplay.GateVerdict]]:
  """F_ε over parsed proposals: (indices of the parsed ones, their verdicts).

  "strict": the strict `gate` (default `selfplay.dsl_gate` per task: parses, evaluates, no
  output leak; `task_family(c).gate` for Python); a rejected task is let in with probability
  `leak_rate` (one `rng` draw per rejected task, in proposal order). "off": every parsed
  proposal is admitted; one that fails the gate is marked `leaked` and keeps no label if it did
  not run. Unparsed completions are never tasks.
  """
  cand = [i for i, p in enumerate(parsed) if p is not None]
  gate = gate or _dsl_gate
  verdicts = []
  for v in gate([parsed[i][0] for i in cand], [parsed[i][1] for i in cand]):
    if not v.admitted and (mode == "off" or (leak_rate > 0 and rng.random() < leak_rate)):
      v = selfplay.GateVerdict(True, v.reason, v.output, leaked=True)
    verdicts.append(v)
  return cand, verdicts


def _tokenizer(c: mlc.ConfigDict, fam: TaskFamily, workdir: str):
  corpus = []
  for t in fam.seed_tasks(c.tokenizer_tasks, c.seed + 1):
    corpus += [
      fam.solver_prompt(t) + fam.solver_target(t),
      fam.proposer_prompt([t]) + fam.proposer_target(t),
    ]
  path = tasks.train_tokenizer(corpus, os.path.join(workdir, "tokenizer"), vocab_size=c.vocab_size)
  return tokenizers_lib.SentencePieceTokenizer(path)


def _sft_batch(data: TaskData, pairs: list[tuple[str, str]], max_len: int) -> dict[str, np.ndarray]:
  tok = data.tokenizer
  n = len(pairs)
  tokens = np.full((n, max_len), max(tok.pad_id, 0), np.int32)
  valid = np.zeros((n, max_len), bool)
  loss_mask = np.zeros((n, max_len), np.float32)
  for i, (prompt, target) in enumerate(pairs):
    p_ids = data.encode_prompt(prompt)
    ids = [*p_ids, *tok.encode(target), tok.eos_id][:max_len]
    tokens[i, : len(ids)], valid[i, : len(ids)] = ids, True
    loss_mask[i, len(p_ids) : len(ids)] = 1.0
  return {"tokens": tokens, "valid": valid, "loss_mask": loss_mask}


class SelfPlay:
  """State of one self-play run: model parameters, optimiser, pool, sampler, metrics."""

  def __init__(self, config: mlc.ConfigDict, workdir: str):
    validate(config)
    self.c, self.workdir = config, workdir
    train_lib.check_workdir_config(workdir, config.to_json(sort_keys=True))
    self.fam = fam = task_family(config)
    tok = _tokenizer(config, fam, workdir)
    self.data = TaskData(
      task=tasks.get_task("jsonl"), train=[], test=[], tokenizer=tok, chat_template=None
    )
    cfg = models.get_config(config.model.name, vocab_size=tok.vocab_size, **config.model.overrides)
    model = models.Decoder(cfg, rngs=nnx.Rngs(config.seed))
    # config.model.lora (rank > 0): params are the adapters, `rest` the frozen (optionally
    # quantised) base, an argument of the compiled updates (as in the trainer).
    self.lora = _lora_enabled(config)
    self.base_info = _add_lora(config, model) if self.lora else None
    if self.lora:
      self.graphdef, self.params, base, rest = nnx.split(model, nnx.LoRAParam, nnx.Param, ...)
      self.rest = nnx.merge_state(base, rest)
    else:
      self.graphdef, self.params, self.rest = nnx.split(model, nnx.Param, ...)
    merged = self.lora and config.model.lora.sample_merged
    self._policy = _policy_fn(self.graphdef, self.params, self.rest, merged=merged)
    self.sampler = Sampler(self._policy(self.params), cache_size=config.cache_size)
    opt = dict(warmup_steps=10, min_lr_ratio=0.1, weight_decay=0.01, b1=0.9, b2=0.98, grad_clip=1.0)
    self.sft_tx = train_lib.make_optimizer(lr=config.sft.lr, steps=max(config.sft.steps, 1), **opt)
    self.rl_tx = train_lib.make_optimizer(lr=config.lr, steps=max(2 * config.steps, 1), **opt)
    self.sft_update = self._with_rest(train_lib.make_update(
      functools.partial(train_lib.sft_loss, impl="chunked"), self.sft_tx, self.graphdef,
      None if self.lora else self.rest, **train_lib.lora_dropout_kwargs(config, "sft"),
    ))  # fmt: skip
    spec = train_lib.RLSpec(
      algorithm="grpo", group_size=config.group_size, eps_low=0.2, eps_high=0.28, dual_clip=None,
      agg="token_mean", max_len=None, kl_coef=0.0, kl_kind="k3", entropy_coef=0.0,
      conspo_tau=10.0, logprob_impl="chunked",
    )  # fmt: skip
    self.rl_update = self._with_rest(train_lib.make_update(
      functools.partial(train_lib.rl_loss, spec=spec), self.rl_tx, self.graphdef,
      None if self.lora else self.rest, **train_lib.lora_dropout_kwargs(config, "rl"),
    ))  # fmt: skip
    self.rl_cfg = mlc.ConfigDict(
      dict(group_size=config.group_size, adv_scale="group", dynamic_sampling=False,
           temporal=dict(enabled=False))
    )  # fmt: skip
    seeds = fam.seed_tasks(config.seed_pool, config.seed)
    self.seed_tasks = seeds
    self.pool = selfplay.TaskPool(tuple(seeds), max_size=config.max_pool)
    self.val_tasks = fam.seed_tasks(config.val_tasks, config.seed + 10_000)
    self.rng = np.random.default_rng([config.seed, 1])
    self.key = jax.random.key(config.seed)

  # -- helpers ---------------------------------------------------------------------------------

  def _with_rest(self, update: Callable[..., Any]) -> Callable[..., Any]:
    """`(params, opt_state, batch, *extra)`; with LoRA the frozen base is passed as `update`'s
    argument (`make_update(..., rest=None)`), never a constant of the compiled step."""
    if not self.lora:
      return update
    return lambda params, opt_state, batch, *extra: update(
      params, opt_state, self.rest, batch, *extra
    )

  def _sample(self, prompts: list[str], *, n: int, temperature: float, key: jax.Array):
    self.sampler.update(self._policy(self.params))
    ids = [self.data.encode_prompt(p) for p in prompts]
    out, texts, _ = train_lib.sample_rollouts(
      self.sampler, self.data, ids, key=key, n=n, max_new_tokens=self.c.max_new_tokens,
      temperature=temperature,
    )  # fmt: skip
    return out, texts

  def _update(self, out, rewards: np.ndarray) -> dict[str, float]:
    batch, metrics = train_lib.rl_batch(out, rewards, rl=self.rl_cfg, progress=0.0)
    self.params, self.opt_state, aux = self.rl_update(self.params, self.opt_state, batch, 0.0)
    aux = jax.device_get(aux)
    return {**metrics, "loss": float(aux["loss"]), "entropy": float(aux["entropy"])}

  def warm_start(self) -> float:
    """SFT on seed tasks of both roles; returns the last loss."""
    c, loss = self.c, float("nan")
    self.opt_state = self.sft_tx.init(self.params)
    rng = np.random.default_rng([c.seed, 2])
    fam = self.fam
    pool = fam.seed_tasks(c.sft.pool, c.seed + 20_000)
    for _ in range(c.sft.steps):
      pairs = []
      for i in rng.choice(len(pool), size=c.sft.batch_size, replace=False):
        t = pool[i]
        if rng.random() < 0.5:
          pairs.append((fam.solver_prompt(t), fam.solver_target(t)))
        else:
          refs = [pool[j] for j in rng.choice(len(pool), size=c.num_refs, replace=False)]
          pairs.append((fam.proposer_prompt(refs), fam.proposer_target(t)))
      batch = _sft_batch(self.data, pairs, c.sft.max_len)
      self.params, self.opt_state, aux = self.sft_update(self.params, self.opt_state, batch)
      loss = float(aux["loss"])
    self.opt_state = self.rl_tx.init(self.params)
    return loss

  def validate_solver(self, step: int) -> dict[str, float]:
    """Greedy held-out solver accuracy on fixed generated tasks."""
    key = jax.random.fold_in(jax.random.fold_in(self.key, 2**30), step)
    _, texts = self._sample(
      [self.fam.solver_prompt(t) for t in self.val_tasks], n=1, temperature=0.0, key=key
    )
    hits = [self.fam.canonical_answer(x) == t.output for x, t in zip(texts, self.val_tasks)]
    return {"val/accuracy": float(np.mean(hits))}

  # -- one step --------------------------------------------------------------------------------

  def step(self, step: int) -> dict[str, float]:
    c, g, fam = self.c, self.c.group_size, self.fam
    key = jax.random.fold_in(self.key, step)
    k_prop, k_solve = jax.random.split(key)
    # 1. propose
    n_prompts = c.proposals // g
    prompts = []
    for _ in range(n_prompts):
      refs = [
        self.pool.tasks[i] for i in self.rng.choice(len(self.pool), size=c.num_refs, replace=False)
      ]
      prompts.append(fam.proposer_prompt(refs))
    p_out, p_texts = self._sample(prompts, n=g, temperature=c.temperature, key=k_prop)
    parsed = [fam.parse_proposal(t) for t in p_texts]
    # 2. gate
    gate_start = time.perf_counter()
    cand, verdicts = gate_proposals(
      parsed, mode=c.gate.mode, leak_rate=c.gate.leak_rate, rng=self.rng, gate=fam.gate
    )
    gate_s = time.perf_counter() - gate_start
    before = {(t.program, t.inputs) for t in self.pool.tasks}
    self.pool, admit_stats = selfplay.admit(
      self.pool, [parsed[i][0] for i in cand], [parsed[i][1] for i in cand], verdicts, kind=fam.kind
    )
    new = [t for t in self.pool.tasks if (t.program, t.inputs) not in before]
    # 3. solve: the new tasks first ("max_new"), then random pool tasks
    batch_tasks = new[: c.solver_tasks]
    rest = c.solver_tasks - len(batch_tasks)
    if rest > 0:
      batch_tasks += [self.pool.tasks[i] for i in self.rng.choice(len(self.pool), size=rest)]
    s_out, s_texts = self._sample(
      [fam.solver_prompt(t) for t in batch_tasks], n=g, temperature=c.temperature, key=k_solve
    )
    answers = [
      [fam.canonical_answer(x) for x in s_texts[i * g : (i + 1) * g]]
      for i in range(len(batch_tasks))
    ]
    labels = [t.output for t in batch_tasks]
    if c.solver_reward == "grounded":
      s_rewards = selfplay.grounded_reward(answers, labels)
    else:
      s_rewards = selfplay.self_consistency_reward(answers)
    # 4. proposer reward: 1 - solver accuracy on the proposed (new, admitted) task
    acc_by_task = {}
    for t, row in zip(batch_tasks, answers):
      label = t.output if c.proposer_label == "grounded" else selfplay.majority_vote(row)[0]
      acc_by_task[(t.program, t.inputs)] = float(selfplay.solver_accuracy([row], [label])[0])
    acc = np.ones(len(p_texts))
    ok = np.zeros(len(p_texts), bool)
    for i, p in enumerate(parsed):
      if p is not None and p in acc_by_task and p in {(t.program, t.inputs) for t in new}:
        acc[i], ok[i] = acc_by_task[p], True
    p_rewards = selfplay.proposer_reward(acc, ok, mode=c.proposer_reward_mode)
    # 5. updates
    start = time.perf_counter()
    m_s = self._update(s_out, s_rewards.reshape(-1).astype(np.float32))
    m_p = self._update(p_out, p_rewards.astype(np.float32))
    metrics = {f"admit/{k}": v for k, v in admit_stats.items()}
    metrics.update(selfplay.selfplay_metrics(self.pool, solver_answers=answers, labels=labels))
    metrics.update(
      {f"solver/{k}": v for k, v in m_s.items()} | {f"proposer/{k}": v for k, v in m_p.items()}
    )
    metrics["proposer/parsed_frac"] = len(cand) / max(len(p_texts), 1)
    metrics["proposer/new_tasks"] = float(len(new))
    metrics["pool/new_trivial_rate"] = (
      float(np.mean([selfplay.is_trivial_output(t.output, t.inputs) for t in new])) if new else 0.0
    )
    metrics["update_s"] = time.perf_counter() - start
    metrics["gate_s"] = gate_s
    return metrics

  def run(self) -> dict[str, Any]:
    from tqdm.auto import tqdm

    c = self.c
    writer = train_lib.MetricsWriter(self.workdir)
    report: dict[str, Any] = {"sft_loss": self.warm_start()}
    report["evals"] = [dict(self.validate_solver(0), step=0)]
    writer.write(0, report["evals"][-1], kind="eval")
    bar = tqdm(total=c.steps, disable=not c.progress_bar, desc="selfplay", dynamic_ncols=True)
    for step in range(1, c.steps + 1):
      metrics = self.step(step)
      writer.write(step, metrics)
      if step % c.eval_every == 0 or step == c.steps:
        ev = self.validate_solver(step)
        writer.write(step, ev, kind="eval")
        report["evals"].append(dict(ev, step=step))
      bar.update(1)
      bar.set_postfix({k: f"{metrics[k]:.2f}" for k in ("pool/size", "solver/gap") if k in metrics})
    bar.close()
    writer.close()
    ckpt = train_lib.Checkpointer(os.path.join(self.workdir, "checkpoints"), every=1, keep=1)
    # With LoRA: only the adapters, and the base they fit (`train.load_run` rebuilds it).
    meta = {"step": c.steps, **({"lora_base": self.base_info} if self.lora else {})}
    ckpt.maybe_save(c.steps, {"params": self.params}, meta, force=True)
    ckpt.close()
    report["final_pool"] = selfplay.selfplay_metrics(self.pool)
    with open(os.path.join(self.workdir, "report.json"), "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
    plot(os.path.join(self.workdir, "metrics.jsonl"), os.path.join(self.workdir, "selfplay.png"))
    return report


def _lora_enabled(c: mlc.ConfigDict) -> bool:
  lora = c.model.get("lora", None)
  return lora is not None and lora.rank > 0


def _add_lora(c: mlc.ConfigDict, model: nnx.Module) -> dict[str, Any]:
  """`config.model.lora`'s adapters on `model` (in place) and its base quantised as
  `config.model.quantize` says; returns the base's pointer (its SHA-256 before both)."""
  info = {"name": c.model.name, "quantize": c.model.quantize, "sha256": models.base_sha256(model)}
  lora = c.model.lora
  models.add_lora(
    model, rank=int(lora.rank), alpha=float(lora.alpha) or None, targets=tuple(lora.targets),
    seed=c.seed,
  )  # fmt: skip
  models.quantize_base(model, c.model.quantize)
  return info


def _policy_fn(
  graphdef: Any, params: Any, rest: Any, *, merged: bool
) -> Callable[[Any], nnx.Module]:
  """params -> the model the sampler runs: the policy itself, or with LoRA a plain decoder with
  the adapters merged in (`models.merge_lora`, one jitted merge per call; the trainer's default
  `model.lora.sample_merged`)."""
  if not merged:
    return lambda params: nnx.merge(graphdef, params, rest)
  plain = nnx.graphdef(nnx.eval_shape(lambda: models.merge_lora(nnx.merge(graphdef, params, rest))))
  merge = jax.jit(lambda lo, fr: nnx.state(models.merge_lora(nnx.merge(graphdef, lo, fr))))
  return lambda params: nnx.merge(plain, merge(params, rest))


def plot(jsonl_path: str, png_path: str) -> None:
  """Collapse indicators over steps: held-out accuracy, gap, vote share, output diversity."""
  from matplotlib.figure import Figure

  recs = train_lib.read_jsonl(jsonl_path)
  train = [r for r in recs if r["kind"] == "train"]
  evals = [r for r in recs if r["kind"] == "eval"]
  fig = Figure(figsize=(7, 4), dpi=110)
  ax = fig.subplots()
  for key in (
    "solver/gap",
    "solver/vote_share",
    "pool/unique_output_rate",
    "admit/admitted_fraction",
  ):
    pts = [(r["step"], r[key]) for r in train if r.get(key) is not None]
    if pts:
      ax.plot(*zip(*pts), lw=1, label=key)
  pts = [(r["step"], r["val/accuracy"]) for r in evals]
  ax.plot(*zip(*pts), "ko-", label="held-out solver accuracy")
  ax.set_xlabel("step")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(png_path)


def run(config: mlc.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs self-play `config` in `workdir`; returns the report."""
  return SelfPlay(config, workdir).run()
