"""The training loop: optional SFT warm start, then RL (rollout -> reward -> advantage -> loss ->
optax update), with held-out evaluation, metrics, checkpoints and a final report.

Every step's data and randomness are functions of (seed, step), and the checkpoint holds the
parameters, optimiser state and step, so a killed run restarted with the same command continues
exactly where the last checkpoint left it.

The run is laid out on the device mesh of `config.mesh` (`_mesh_context.py`): parameters and optimiser
state in their shards, every jit with explicit shardings, each step's batch split over the batch
axes; with several processes each places its own rows and process 0 writes the run's files.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from flax import nnx

from postrain import models
from postrain.train import (
  _checkpoint,
  _data,
  _distill,
  _env_stage,
  _ftis,
  _memory,
  _mesh_context,
  _metrics_log,
  _rl_step,
  _rollout,
  _teacher,
  _update,
  algorithms,
)
from postrain.train._types import TrainState
from postrain.train.config import validate

_LOG = logging.getLogger(__name__)


def build_model(config: mlc.ConfigDict, vocab_size: int | None, *, seed: int) -> nnx.Module:
  """A decoder from scratch (named config sized to the tokenizer) or from imported weights."""
  src = config.model.source
  param_dtype = config.model.param_dtype or config.model.dtype
  if src == "scratch":
    overrides = dict(
      vocab_size=vocab_size,
      dtype=config.model.dtype,
      param_dtype=param_dtype,
      remat=remat_policy(config),
    )
    overrides.update(config.model.overrides.to_dict())
    cfg = models.get_config(config.model.name, **overrides)
    return models.Decoder(cfg, rngs=nnx.Rngs(seed))
  if not os.path.exists(config.model.path):
    raise FileNotFoundError(f"config.model.path: no such file or directory {config.model.path!r}")
  loader = models.from_gguf if src == "gguf" else models.from_hf_dir
  _, model = loader(config.model.path, dtype=config.model.dtype, param_dtype=param_dtype)
  model.cfg = model.cfg.replace(remat=remat_policy(config))
  return model


def remat_policy(config: mlc.ConfigDict) -> str:
  """`config.model.remat`, with "auto" resolved: "block" for imported models, else "none"."""
  if config.model.remat != "auto":
    return config.model.remat
  return "none" if config.model.source == "scratch" else "block"


class Trainer:
  """Holds the run's state; `run()` trains from the latest checkpoint to the end."""

  def __init__(
    self,
    config: mlc.ConfigDict,
    workdir: str,
    *,
    model: nnx.Module | None = None,
    tokenizer: Any = None,
    chat_template: Any = None,
  ):
    validate(config)
    self.config, self.workdir = config, workdir
    # The mesh first: a config that does not fit the devices fails before any data or compilation.
    self.mesh = mesh = _mesh_context.mesh_context(config)
    with mesh.primary_first("workdir"):  # process 0 writes config, dataset and tokenizer
      _checkpoint.check_workdir_config(workdir, config.to_json(sort_keys=True))
      if tokenizer is None:  # OPD from another postrain run: read the teacher's token ids
        tokenizer = _teacher.default_tokenizer(config)
      self.data = _data.load_task_data(
        config, workdir, tokenizer=tokenizer, chat_template=chat_template
      )
    # Lengths and counts against the config (file:line of the worst offender), before compiling.
    self.data_stats = _data.check_task_data(config, self.data)
    vocab = self.data.tokenizer.vocab_size
    # LoRA (config.model.lora.rank > 0): params are the adapters, `rest` the frozen base (and the
    # non-parameter state), an argument of every compiled step (`rest_shardings`).
    self.lora = config.model.lora.rank > 0
    self.rest_shardings = self.base_info = None
    if self.lora:
      if model is None:
        with _mesh_context.host_memory():
          model = build_model(config, vocab, seed=config.seed)
      else:
        model = nnx.clone(model)  # adapters are added in place: leave the caller's model alone
      self._base_hash = models.base_sha256(model)
      self.graphdef, params, self.rest, self.param_shardings, self.rest_shardings = _lora_model(
        config, model, mesh
      )
      self.base_info = self._base_info()
    elif model is None and config.model.source == "scratch" and mesh.mesh.size > 1:
      # Created in its shards: no device ever holds the whole model.
      self.graphdef, params, self.rest, self.param_shardings = mesh.init_sharded(
        lambda: build_model(config, vocab, seed=config.seed)
      )
    else:
      if model is None:
        with _mesh_context.host_memory():  # imported weights stay in host memory until placed
          model = build_model(config, vocab, seed=config.seed)
      self.graphdef, params, self.rest, self.param_shardings = mesh.place(model)
    self._merge_fn = self._plain_graphdef = None
    if self.lora and config.model.lora.sample_merged:
      lora_model = nnx.merge(self.graphdef, params, self.rest)
      self._plain_graphdef = nnx.graphdef(nnx.eval_shape(lambda: models.merge_lora(lora_model)))
      graphdef = self.graphdef
      self._merge_fn = jax.jit(
        lambda lo, fr: nnx.state(models.merge_lora(nnx.merge(graphdef, lo, fr)))
      )
    self.sampler = mesh.sampler(self.sampling_model(params), cache_size=config.rl.cache_size)
    # config.env: multi-turn, tool-using rollouts (`_env_stage.py`; each process its own rows).
    self.env = None
    if _env_stage.enabled(config):
      self.env = _env_stage.EnvRollouts(config, self.data, self.sampler, mesh)
    self.sft_steps, self.rl_steps = (
      config.sft.steps,
      (config.rl.steps if config.mode in ("rl", "opd", "mopd") else 0),
    )
    self.total_steps = self.sft_steps + self.rl_steps
    opt = config.optimizer
    common = dict(
      warmup_steps=opt.warmup_steps,
      min_lr_ratio=opt.min_lr_ratio,
      weight_decay=opt.weight_decay,
      b1=opt.b1,
      b2=opt.b2,
      grad_clip=opt.grad_clip,
    )
    self.sft_tx = _update.make_optimizer(lr=config.sft.lr, steps=max(self.sft_steps, 1), **common)
    rl_updates = max(self.rl_steps * config.rl.updates_per_batch, 1)
    self.rl_tx = _update.make_optimizer(lr=config.rl.lr, steps=rl_updates, **common)
    p_sh = self.param_shardings
    # What a step changes: parameters, optimiser state, step and the run's key (`TrainState`;
    # the compiled updates take and return it whole, donated).
    rng, step0 = mesh.replicate((jax.random.key(config.seed), np.int32(0)))
    # OPD / MOPD with teacher.source="ema": the teacher's parameters are part of the state, from
    # the start (a copy of the student, set again when distillation starts after SFT).
    ema = config.mode in ("opd", "mopd") and config.teacher.source == "ema"
    self.state = TrainState(
      params=params,
      opt_state=mesh.init_opt_state(self.sft_tx if self.sft_steps else self.rl_tx, params, p_sh),
      rng=rng,
      step=step0,
      teacher=jax.tree.map(jnp.copy, params) if ema else None,
    )
    impl = config.model.logprob_impl
    self.sft_update = mesh.shard_state_update(
      _update.make_state_update(
        functools.partial(_update.sft_loss, impl=impl),
        self.sft_tx,
        self.graphdef,
        None if self.lora else self.rest,
        counts_fn=_update.sft_counts,
        microbatch_rows=config.sft.microbatch_rows,
        **_update.lora_dropout_kwargs(config, "sft"),
      ),
      mesh.state_shardings(self.sft_tx, params, p_sh, teacher=ema),
      **self._rest_kwargs(),
    )
    rl = config.rl
    self.rl_spec = _update.RLSpec(
      algorithm=rl.algorithm,
      group_size=rl.group_size,
      eps_low=rl.eps_low,
      eps_high=rl.eps_high,
      dual_clip=rl.dual_clip or None,
      agg=rl.agg,
      max_len=rl.max_new_tokens if rl.agg == "seq_mean_token_sum_norm" else None,
      kl_coef=rl.kl_coef,
      kl_kind=rl.kl_kind,
      entropy_coef=rl.entropy_coef,
      conspo_tau=rl.conspo_tau,
      logprob_impl=impl,
      loss_kwargs=algorithms.loss_kwargs(rl),
    )
    self.rl_update = mesh.shard_state_update(
      _update.make_state_update(
        functools.partial(_update.rl_loss, spec=self.rl_spec),
        self.rl_tx,
        self.graphdef,
        None if self.lora else self.rest,
        counts_fn=functools.partial(_update.rl_counts, spec=self.rl_spec),
        microbatch_rows=rl.microbatch_rows,
        group_size=rl.group_size,
        **_update.lora_dropout_kwargs(config, "rl"),
      ),
      mesh.state_shardings(self.rl_tx, params, p_sh, teacher=ema),
      **self._rest_kwargs(),
    )
    self.base_logprobs = None
    # `(params, tokens, mask, valid, score_from=0, prefix_group=1) -> logp`: one compiled pass
    # per batch layout (`make_logprob_fn`; an RL batch passes its `score_from` / `prompt_group`).
    if self.lora:
      # (adapters, frozen) pairs: the frozen base is an argument of the compiled pass.
      on = self._logprob_fns(impl, (p_sh, self.rest_shardings))
      off = self._logprob_fns(impl, (p_sh, self.rest_shardings), adapters=False)
      self.ref_logprobs = lambda params, *batch, **layout: on(**layout)((params, self.rest), *batch)
      # The KL reference: the base with the adapters switched off.
      if rl.kl_coef > 0:
        self.base_logprobs = lambda params, *batch, **layout: off(**layout)(
          (params, self.rest), *batch
        )
    else:
      ref = self._logprob_fns(impl, p_sh)
      self.ref_logprobs = lambda params, *batch, **layout: ref(**layout)(params, *batch)
    # The frozen reference model of the KL term (reset to the policy when RL starts); with LoRA
    # the base itself (`base_logprobs`), no copy.
    self.ref_params = (
      jax.tree.map(jnp.copy, self.params) if rl.kl_coef > 0 and not self.lora else None
    )
    self.checkpointer = _checkpoint.Checkpointer(
      os.path.join(workdir, "checkpoints"),
      every=config.checkpoint.every,
      keep=config.checkpoint.keep,
    )
    # (step, "sft" | "rl", ids of the problems this process loaded): the last steps, for tests and
    # debugging of the per-process data split.
    self.problem_log: collections.deque = collections.deque(maxlen=64)
    # Modes "opd" / "mopd": the teacher and the distillation step (postrain/train/_distill.py).
    self.distiller = (
      _distill.Distiller(
        config,
        mesh,
        graphdef=self.graphdef,
        rest=self.rest,
        params=self.params,
        param_shardings=self.param_shardings,
        tx=self.rl_tx,
        rest_shardings=self.rest_shardings,
      )
      if config.mode in ("opd", "mopd")
      else None
    )
    tok = self.data.tokenizer
    # F-TIS: rollouts of another model mixed into the RL batches (postrain/train/_ftis.py).
    self.ftis = (
      _ftis.ForeignRollouts(config.rl, vocab_size=tok.vocab_size, pad_id=tok.pad_id)
      if config.rl.ftis.path
      else None
    )
    # The fixed parts of an RL / distillation step (`_rl_step.py`).
    self.step_parts = _rl_step.RLStepParts(
      config=config,
      mesh=mesh,
      data=self.data,
      sampler=self.sampler,
      graphdef=self.graphdef,
      rest=self.rest,
      update=self.rl_update,
      logprobs=self.ref_logprobs,
      num_rl_steps=self.rl_steps,
      foreign=self.ftis,
      sampling_model=self.sampling_model,
      base_logprobs=self.base_logprobs,
      env=self.env,
    )
    self.update_memory = self._check_memory() if _memory.should_check(config) else {}

  def _logprob_fns(self, impl: str, shardings: Any, *, adapters: bool = True) -> Any:
    """`(score_from=0, prefix_group=1) -> the sharded log-prob pass for that batch layout`, each
    built once (LoRA, `self.lora`: over (adapters, frozen) pairs)."""
    rest = None if self.lora else self.rest

    @functools.cache
    def build(score_from: int = 0, prefix_group: int = 1):
      fn = _update.make_logprob_fn(
        self.graphdef, rest, impl, adapters=adapters, score_from=score_from,
        prefix_group=prefix_group,
      )  # fmt: skip
      return self.mesh.shard_logprob_fn(fn, shardings)

    return build

  # -- LoRA ------------------------------------------------------------------------------------

  def _rest_kwargs(self) -> dict[str, Any]:
    """LoRA: the frozen base as the compiled update's argument (`MeshContext.shard_update`)."""
    return dict(rest=self.rest, rest_sh=self.rest_shardings) if self.lora else {}

  def _base_info(self) -> dict[str, Any]:
    """The pointer to the frozen base a LoRA checkpoint stores: where it comes from and the
    SHA-256 of its weights (computed before adapters and quantisation)."""
    c = self.config.model
    return {
      "source": c.source,
      "name": c.name,
      "path": c.path,
      "quantize": c.quantize,
      "sha256": self._base_hash,
    }

  def sampling_model(self, params: Any) -> nnx.Module:
    """The model the sampler runs for `params`: the policy itself, or with LoRA and
    `model.lora.sample_merged` a plain decoder with the adapters merged in (one jitted merge per
    call; sampling then costs what a full model's does)."""
    if self._merge_fn is None:
      return nnx.merge(self.graphdef, params, self.rest)
    return nnx.merge(self._plain_graphdef, self._merge_fn(params, self.rest))

  def _check_memory(self) -> dict[str, _memory.UpdateMemory]:
    """Prints the compiler's memory plan of the SFT and RL updates at their largest batch and
    refuses (MemoryError naming the keys to lower) one that does not fit the device."""
    cfg, out = self.config, {}
    log = print if self.mesh.is_primary else (lambda *_: None)
    kw = dict(limit_gb=cfg.memory.limit_gb, log=log)
    if self.sft_steps:
      state = self.abstract_state(self.sft_tx)
      lowered = self.sft_update.lower(state, _memory.abstract_sft_batch(cfg))
      out["sft"] = _memory.check_update_memory("sft", lowered, **kw)
    if self.rl_steps and cfg.mode == "rl":
      margin = jax.ShapeDtypeStruct((), jnp.float32)
      lowered = self.rl_update.lower(
        self.abstract_state(self.rl_tx), _memory.abstract_rl_batch(cfg), margin
      )
      out["rl"] = _memory.check_update_memory("rl", lowered, **kw)
    return out

  def abstract_state(self, tx: Any) -> TrainState:
    """The `TrainState` of shapes and dtypes the update with optimiser `tx` takes (for `.lower`)."""
    return jax.eval_shape(lambda s: s.replace(opt_state=tx.init(s.params)), self.state)

  # -- state -----------------------------------------------------------------------------------

  # The state's fields, read and set through the trainer (tests, experiments, checkpoints).
  params = property(
    lambda self: self.state.params,
    lambda self, v: setattr(self, "state", self.state.replace(params=v)),
  )
  opt_state = property(
    lambda self: self.state.opt_state,
    lambda self, v: setattr(self, "state", self.state.replace(opt_state=v)),
  )
  # The host's copy of the step (a device scalar in the state): the one named place the loop
  # reads it (the step's problems, evaluation and checkpoint cadence, the data position).
  step = property(
    lambda self: int(self.state.step),
    lambda self, v: setattr(self, "state", self.state.replace(step=self._device_step(v))),
  )
  base_key = property(lambda self: self.state.rng)

  def _device_step(self, step: int) -> jax.Array:
    """A step number as the state's i32[] scalar, replicated on the mesh."""
    return self.mesh.replicate(np.int32(step))

  def _state(self) -> dict[str, Any]:
    """What a checkpoint holds (the step and key are in its metadata)."""
    state = {"params": self.params, "opt_state": self.opt_state}
    if self.ref_params is not None:
      state["ref_params"] = self.ref_params
    if self.state.teacher is not None:  # OPD / MOPD's EMA teacher
      state["teacher_params"] = self.state.teacher
    return state

  def _save(self, *, force: bool = False) -> None:
    meta = {
      **({"lora_base": self.base_info} if self.lora else {}),
      "step": self.step,
      "data_position": self._data_position(),
      "rng_key": np.asarray(jax.random.key_data(self.state.rng)).tolist(),
    }
    if self.checkpointer.maybe_save(self.step, self._state(), meta, force=force):
      _LOG.info("checkpoint saved at step %d", self.step)

  def _data_position(self) -> int:
    """Problems consumed so far (SFT examples, then RL prompts)."""
    sft = min(self.step, self.sft_steps) * self.config.sft.batch_size
    return sft + max(self.step - self.sft_steps, 0) * self.config.rl.prompts_per_step

  def _restore(self) -> None:
    restored = self.checkpointer.restore_latest(_checkpoint.abstract_like(self._state()))
    if restored is None:
      return
    step, state, meta = restored
    if self.lora:
      self._check_base(meta)
    self.state = self.state.replace(
      params=state["params"], opt_state=state["opt_state"], step=self._device_step(step)
    )
    self.ref_params = state.get("ref_params")
    if "teacher_params" in state:
      self.state = self.state.replace(teacher=state["teacher_params"])
    _LOG.info("resumed from step %d", self.step)

  def _check_base(self, meta: dict[str, Any]) -> None:
    """A LoRA checkpoint's adapters only fit the base they were trained on."""
    saved = meta.get("lora_base")
    if saved is None or saved.get("sha256") != self.base_info["sha256"]:
      raise ValueError(
        f"config.model: the LoRA checkpoint in {self.checkpointer.directory} was trained on the "
        f"base {saved} but this run's base (config.model.source/name/path) is {self.base_info} "
        "(weights' SHA-256 differ); restore it onto its own base or use a new workdir."
      )

  def _enter_rl(self) -> None:
    """Fresh optimiser state for the RL phase and the frozen reference model for the KL term."""
    self.opt_state = self.mesh.init_opt_state(self.rl_tx, self.params, self.param_shardings)
    if self.config.rl.kl_coef > 0 and not self.lora:
      self.ref_params = jax.tree.map(jnp.copy, self.params)
    if self.distiller is not None:
      self.state = self.state.replace(teacher=self.distiller.initial_teacher(self.params))

  # -- steps -----------------------------------------------------------------------------------

  def _sft_step(self) -> dict[str, float]:
    cfg = self.config
    problems = _data.step_problems(
      self.data.train, seed=cfg.seed, step=self.step, count=cfg.sft.batch_size
    )
    curriculum = (
      cfg.rl.scrl_curriculum_frac if cfg.rl.algorithm == "scrl" and cfg.mode == "rl" else 0.0
    )
    # Each process builds only its rows of the batch (all of them on one process); the SCRL
    # curriculum split depends on the global row index.
    mine = self.mesh.item_slice(len(problems))
    self._record_problems("sft", problems[mine])
    host = _data.sft_batch(
      self.data,
      problems[mine],
      cfg.sft.max_len,
      curriculum_frac=curriculum,
      num_subproblems=cfg.rl.scrl_num_subproblems,
      terse_frac=cfg.sft.terse_fraction,
      row_offset=mine.start,
      total_rows=len(problems),
      tool_frac=cfg.sft.tool_fraction,
    )
    batch = self.mesh.from_local(host, len(problems))
    start = time.perf_counter()
    self.state, aux = self.sft_update(self.state, batch)
    aux = self.mesh.to_host(aux)
    seconds = time.perf_counter() - start
    tokens = self.mesh.sum_over_processes(host["valid"].sum())
    return {
      "sft_loss": aux["loss"],
      "grad_norm": aux["grad_norm"],
      "train_tokens_per_s": float(tokens) / seconds,
    }

  def _rl_step(self) -> dict[str, float]:
    """One RL step (`_rl_step.rl_step`: every variant, one process or many)."""
    step = self.step
    problems = _data.step_problems(
      self.data.train, seed=self.config.seed, step=step, count=self.config.rl.prompts_per_step
    )
    self.state, metrics = _rl_step.rl_step(
      self.state,
      self.step_parts,
      problems,
      rl_index=step - self.sft_steps,
      ref_params=self.ref_params,
      record=lambda mine: self._record_problems("rl", mine),
    )
    return metrics

  def _distill_step(self) -> dict[str, float]:
    """One OPD / MOPD step (`_distill_local.distill_step`)."""
    problems = _data.step_problems(
      self.data.train, seed=self.config.seed, step=self.step, count=self.config.rl.prompts_per_step
    )
    self.state, metrics = self.distiller.step(
      self.state,
      self.step_parts,
      problems,
      record=lambda mine: self._record_problems("distill", mine),
    )
    return metrics

  def _record_problems(self, kind: str, problems: list[Any]) -> None:
    """The ids of the problems this process generated / scored at this step (`problem_log`)."""
    self.problem_log.append((self.step, kind, [p.id for p in problems]))

  def evaluate(self) -> dict[str, float]:
    cfg = self.config
    self.sampler.update(self.sampling_model(self.params))  # also config.env's
    key = jax.random.fold_in(jax.random.fold_in(self.state.rng, 2**30), self.step)
    return _rollout.evaluate(
      self.sampler,
      self.data,
      self.data.test[: cfg.eval.num_problems],
      key=key,
      k=cfg.eval.k,
      max_new_tokens=cfg.eval.max_new_tokens,
      timeout_s=cfg.task.verifier_timeout_s,
      mesh=self.mesh,  # several processes: each evaluates its share of the problems
      record=lambda problems: self._record_problems("eval", problems),
      env=self.env,  # config.env: multi-turn episodes
    )

  # -- the loop --------------------------------------------------------------------------------

  def run(self) -> dict[str, Any]:
    """Trains from the newest checkpoint to the end: evaluate when due, one step, log, save."""
    self._restore()
    writer, bar = self._open_logs()
    report = self._load_report()
    report.update(self.data_stats)  # eval_num_problems, sft_examples_truncated
    try:
      with _checkpoint.StopFlag() as stop:
        while self.step < self.total_steps:
          self._eval_if_due(writer, report)
          metrics = self._train_step()
          self.state = self.state.advance()  # one trainer step (its updates leave `step`)
          self._log_step(writer, bar, metrics)
          self._save()
          if stop.stop_requested:
            return self._preempted(report, stop.signum)
      if "final" not in report or report["final"].get("step") != self.step:
        report["final"] = self._eval_and_log(writer, report)
      self._save(force=True)
    finally:
      bar.close()
      writer.close()
      self.checkpointer.wait()
    self._require_checkpoint()  # the report never claims a step whose checkpoint is not on disk
    self._write_report(report)
    return report

  def _open_logs(self) -> tuple[Any, Any]:
    """The metrics writer (process 0; resumed past the restored step) and the progress bar."""
    from tqdm.auto import tqdm

    primary = self.mesh.is_primary  # process 0 writes metrics and the report
    resume = self.step if self.step else None
    writer = (
      _metrics_log.MetricsWriter(self.workdir, resume_step=resume) if primary else _NoWriter()
    )
    bar = tqdm(
      total=self.total_steps,
      initial=self.step,
      disable=not self.config.progress_bar or not primary,
      desc="train",
      dynamic_ncols=True,
    )
    return writer, bar

  def _eval_if_due(self, writer: Any, report: dict[str, Any]) -> None:
    """Evaluates at the start of RL (then enters the RL phase), every `eval.every` RL steps, and
    every `eval.every` steps of an SFT-only run."""
    cfg, rl_index = self.config, self.step - self.sft_steps
    if self.step == self.sft_steps:
      report["after_sft" if self.sft_steps else "initial"] = self._eval_and_log(writer, report)
      self._enter_rl()
    elif rl_index > 0 and rl_index % cfg.eval.every == 0:
      self._eval_and_log(writer, report)
    elif cfg.mode == "sft" and self.step and self.step % cfg.eval.every == 0:
      self._eval_and_log(writer, report)  # SFT-only runs: held-out curve too

  def _train_step(self) -> dict[str, float]:
    """The step of the current phase: SFT, then OPD / MOPD or RL."""
    if self.step < self.sft_steps:
      return self._sft_step()
    return self._distill_step() if self.distiller is not None else self._rl_step()

  def _log_step(self, writer: Any, bar: Any, metrics: dict[str, float]) -> None:
    if self.step % self.config.log_every == 0 or self.step == self.total_steps:
      writer.write(self.step, metrics)
    if self.config.check_finite:  # before the save: a non-finite state is never checkpointed
      _metrics_log.check_finite(metrics, step=self.step, kind="train")
    bar.update(1)
    shown = ("sft_loss", "reward_mean", "accuracy")
    bar.set_postfix({k: f"{metrics[k]:.3g}" for k in shown if k in metrics})

  def _preempted(self, report: dict[str, Any], signum: int) -> dict[str, Any]:
    """SIGTERM / SIGINT: checkpoint now, record it in the report, return (the CLI exits 143 / 130)."""
    self._save(force=True)
    self.checkpointer.wait()
    self._require_checkpoint()
    self.checkpointer.close()
    _LOG.warning("preempted at step %d by signal %d; rerun to resume", self.step, signum)
    report["preempted"] = {"step": self.step, "signal": signum}
    self._write_report(report)
    return report

  def _require_checkpoint(self) -> None:
    if self.step not in self.checkpointer.steps():
      raise RuntimeError(
        f"the checkpoint of step {self.step} is not in {self.checkpointer.directory} after "
        "saving; report.json is left as it was"
      )

  def _eval_and_log(
    self, writer: _metrics_log.MetricsWriter, report: dict[str, Any]
  ) -> dict[str, float]:
    metrics = self.evaluate()
    writer.write(self.step, metrics, kind="eval")
    if self.config.check_finite:
      _metrics_log.check_finite(metrics, step=self.step, kind="eval")
    result = dict(metrics, step=self.step)
    report.setdefault("evals", [])
    report["evals"] = [e for e in report["evals"] if e["step"] != self.step] + [result]
    self._write_report(report)
    if self.mesh.is_primary:
      print(
        f"[eval step {self.step}] "
        + " ".join(f"{k}={v:.3f}" for k, v in result.items() if k != "step")
      )
    return result

  def _load_report(self) -> dict[str, Any]:
    path = os.path.join(self.workdir, "report.json")
    if self.step and os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        report = json.load(f)
      # The evaluation at the restored step runs again after the restore (as its metrics.jsonl
      # record is dropped): results from that step on are stale.
      report["evals"] = [e for e in report.get("evals", []) if e["step"] < self.step]
      for name in ("initial", "after_sft", "final"):
        if name in report and report[name]["step"] >= self.step:
          del report[name]
      report.pop("preempted", None)
      return report
    return {}

  def _write_report(self, report: dict[str, Any]) -> None:
    if not self.mesh.is_primary:
      return
    path = os.path.join(self.workdir, "report.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
    os.replace(path + ".tmp", path)
    jsonl = os.path.join(self.workdir, "metrics.jsonl")
    if "final" in report and os.path.exists(jsonl):
      _metrics_log.plot_curves(
        jsonl,
        os.path.join(self.workdir, "curves.png"),
        title=f"{self.config.task.name} / "
        + (self.config.rl.algorithm if self.config.mode == "rl" else self.config.mode),
      )


def _lora_model(config: mlc.ConfigDict, model: nnx.Module, mesh: Any) -> tuple[Any, ...]:
  """Adds `config.model.lora`'s adapters to `model` (in place), quantises its base as
  `config.model.quantize` says, and places it: (graphdef, adapters, frozen rest, their shardings).
  Bad targets / rank: ValueError naming the key, before anything is compiled."""
  lora = config.model.lora
  models.add_lora(
    model,
    rank=int(lora.rank),
    alpha=float(lora.alpha) or None,
    targets=tuple(lora.targets),
    seed=config.seed,
  )
  models.quantize_base(model, config.model.quantize)
  return mesh.place_lora(model)


class _NoWriter:
  """The metrics writer of processes other than 0."""

  def write(self, *args: Any, **kwargs: Any) -> None:
    del args, kwargs

  def close(self) -> None:
    pass


def train(config: mlc.ConfigDict, workdir: str, **kwargs: Any) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint); returns the report."""
  return Trainer(config, workdir, **kwargs).run()
