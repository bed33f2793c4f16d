"""On-policy distillation steps of the trainer: OPD and MOPD (modes "opd" and "mopd").

Where the training states come from is the only difference between the modes (arXiv 2605.22731):
SFT trains on dataset prefixes, RL and OPD/MOPD on the learner's own samples. One step here:

  1. sample `rl.group_size` responses per prompt with the student (the RL sampler);
  2. MOPD only: score them with the task verifier and, per rollout, build a teacher prompt from the
     group's peers (`postrain.tasks.mopd`, arXiv 2605.12652): successes ("positive") or successes
     plus a failure ("contrastive"); the teacher reads `teacher prompt ++ student response`, with
     the response tokens at the same positions from the end, so token t of both sequences is the
     same student token;
  3. the teacher scores the student's states (no gradient);
  4. optional teachability release (arXiv 2605.13643): teacher margin over the student's top-k,
     sentence series (segments end at newlines and sentence punctuation), BIC change point,
     mass-preserving weights on the kept prefix;
  5. one optax update per minibatch of the per-token loss chosen by `distill.loss`:
       "reverse_kl"  KL(π_s ‖ π_t) over the full vocabulary (`losses.reverse_kl_loss`)
       "jsd"         JSD_α over the full vocabulary (`losses.jsd_loss`)
       "topk"        JSD_α over the student's top-k ids + tail bucket (`losses.topk_jsd_loss`)
       "pg"          sampled-token policy gradient with r_t = log π_t − log π_s (`losses.opd_pg_loss`)
     weighted by MOPD's truncated ratio ρ_t = min(exp(log π_θ − log π_old), `distill.is_clip`)
     (Step E; 1 at the first minibatch) and by the release weights;
  6. EMA teacher update when `teacher.source == "ema"`: the teacher's parameters are the
     `TrainState.teacher` field, moved by the same compiled update after each optimiser step
     (`teacher ← decay · teacher + (1 − decay) · params`), checkpointed with the state.

The step (`_distill_local.py`) has one code path for one process and many: each process samples
and prepares only its share of the groups, and one teacher pass scores the global batch.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
from flax import nnx

from postrain import advantages, losses, models
from postrain.train import _teacher

# The config sections of the modes (`config.py` reads them from `_distill_config`, not from here).
from postrain.train._distill_config import (  # noqa: F401
  CONTEXTS,
  LOSSES,
  distill_config,
  teacher_config,
  validate_distill,
)
from postrain.train._teacher import mopd_teacher_prompts, segment_ids, teacher_layout  # noqa: F401

# The MOPD teacher-prompt and release helpers, used by the step (`_distill_local.py`).
from postrain.train._update import mask_counts

# ----------------------------------------------------------------------------------- jitted math


@dataclasses.dataclass(frozen=True)
class DistillSpec:
  """Static settings of the distillation loss (hashable: part of the jit cache key)."""

  loss: str
  alpha: float
  topk: int
  tail: bool
  temperature: float
  agg: str
  is_clip: float


def response_logits(model: nnx.Module, tokens: jax.Array, valid: jax.Array, resp_len: int):
  """Logits f32[B, R, V] predicting the last `resp_len` columns of `tokens` (i32[B, T]).

  The hidden state at column c scores token c + 1, so columns T-R-1 .. T-2 give the R responses.
  """
  hidden, _ = model(tokens, models.positions_from_valid(valid), valid=valid)
  t = tokens.shape[1]
  return model.logits(hidden[:, t - resp_len - 1 : t - 1])


def _gather(logits: jax.Array, ids: jax.Array, temperature: float = 1.0) -> jax.Array:
  """log softmax(logits / τ) at `ids`, f32[B, R]."""
  return losses.topk_logprobs(logits, ids[..., None], temperature=temperature)[..., 0]


def distill_counts(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The normalisers of `distill_loss`: the tokens and the non-empty rows of `mask`."""
  return mask_counts(batch["mask"])


def distill_loss(
  params,
  graphdef,
  rest,
  batch: dict[str, jax.Array],
  spec: DistillSpec,
  totals: dict[str, jax.Array] | None = None,
):
  """Per-token distillation loss of one minibatch.

  batch: tokens i32[B, T], valid bool[B, T], targets i32[B, R] (the response tokens), mask
  f32[B, R], weights f32[B, R] (release × sample mask, constant), old_logp f32[B, R], and either
  teacher_logits f32[B, R, V] or (loss "pg") teacher_logp f32[B, R].

  totals: `distill_counts` of the whole minibatch when `batch` is one of its micro-batches: the
  loss (normalised by the mask's tokens or rows, as `spec.agg` says) and the aux token means are
  then this micro-batch's share (`postrain/train/_update.py`).
  """
  model = nnx.merge(graphdef, params, rest)
  resp_len = batch["targets"].shape[1]
  logits = response_logits(model, batch["tokens"], batch["valid"], resp_len)
  mask = batch["mask"]
  logp = _gather(logits, batch["targets"])
  w = batch["weights"]
  if spec.is_clip > 0:
    log_ratio = jnp.clip(jax.lax.stop_gradient(logp) - batch["old_logp"], -20.0, 20.0)
    w = w * jnp.minimum(jnp.exp(log_ratio), spec.is_clip) * mask
  kw = dict(agg=spec.agg, token_weights=jax.lax.stop_gradient(w))
  if spec.loss == "pg":
    loss, aux = losses.opd_pg_loss(logp, batch["teacher_logp"], mask, **kw)
  elif spec.loss == "topk":
    loss, aux = losses.topk_jsd_loss(
      logits,
      batch["teacher_logits"],
      mask,
      k=spec.topk,
      alpha=spec.alpha,
      tail=spec.tail,
      temperature=spec.temperature,
      **kw,
    )
  else:
    alpha = 1.0 if spec.loss == "reverse_kl" else spec.alpha
    loss, aux = losses.jsd_loss(
      logits, batch["teacher_logits"], mask, alpha=alpha, temperature=spec.temperature, **kw
    )
  aux = dict(aux, loss=loss)
  if "teacher_logits" in batch:  # the full-vocabulary reverse KL, whatever the loss trains
    kl = losses.full_vocab_divergence(logits, batch["teacher_logits"], alpha=1.0)
    aux["reverse_kl"] = losses.aggregate(jax.lax.stop_gradient(kl), mask, agg="token_mean")
  aux.pop("num_tokens", None)
  if totals is not None:
    counts = distill_counts(batch)

    def scale(value, kind):
      return value * (jnp.maximum(counts[kind], 1.0) / jnp.maximum(totals[kind], 1.0))

    loss = scale(loss, "tokens" if spec.agg == "token_mean" else "rows")
    aux = {k: scale(v, "tokens") for k, v in aux.items() if k != "loss"}
    aux["loss"] = loss
  return loss, aux


def make_teacher_fn(
  t_graphdef,
  t_rest,
  s_graphdef,
  s_rest,
  *,
  student_vocab: int,
  full_logits: bool,
  release_k: int,
  vocab_map,
  jit: bool = True,
):
  """Jitted teacher pass: (t_params, t_tokens, t_valid, s_params, s_tokens, s_valid, targets) ->
  {"teacher_logits" f32[B, R, V_s] or "teacher_logp" f32[B, R]} (+ "margin" f32[B, R] when
  release_k > 0, the teacher's best-two gap over the student's top-k ids). `jit=False`: the plain
  function (jitted with explicit shardings by a multi-process run)."""
  vmap = None if vocab_map is None else jnp.asarray(vocab_map, jnp.int32)

  def fn(t_params, t_tokens, t_valid, s_params, s_tokens, s_valid, targets):
    # A rest of None (LoRA): the params are (adapters, frozen base) pairs, both arguments.
    t_params, t_frozen = t_params if t_rest is None else (t_params, t_rest)
    s_params, s_frozen = s_params if s_rest is None else (s_params, s_rest)
    teacher = nnx.merge(t_graphdef, t_params, t_frozen)
    resp_len = targets.shape[1]
    if vmap is not None:  # the teacher reads its own ids; its logits come back on the student's
      t_tokens = vmap[t_tokens]
    t_logits = response_logits(teacher, t_tokens, t_valid, resp_len)
    t_logits = losses.match_vocab(
      jax.ShapeDtypeStruct((1, 1, student_vocab), jnp.float32), t_logits, student_to_teacher=vmap
    )
    out = {}
    if full_logits:
      out["teacher_logits"] = t_logits
    else:
      out["teacher_logp"] = _gather(t_logits, targets)
    if release_k:
      student = nnx.merge(s_graphdef, s_params, s_frozen)
      s_logits = response_logits(student, s_tokens, s_valid, resp_len)
      out["margin"] = advantages.teacher_margin(s_logits, t_logits, k=release_k)
    return out

  return jax.jit(fn) if jit else fn


def ema_step(state: Any, *, decay: float) -> Any:
  """The EMA teacher follows the student after an optimiser step (`losses.ema_update`):
  `state.teacher ← decay · state.teacher + (1 − decay) · state.params`."""
  return state.replace(teacher=losses.ema_update(state.teacher, state.params, decay))


# ------------------------------------------------------------------------------------ host side


class Distiller:
  """The teacher and the OPD / MOPD step (created by the `Trainer` for modes opd / mopd).

  It holds a fixed teacher (`teacher.source` "workdir" / "hf" / "gguf": its parameters
  `teacher_params`) and the jitted teacher pass and update; the student's state is passed in and
  returned by `step`. The EMA teacher (`teacher.source="ema"`) changes every update, so its
  parameters are not held here: they are the state's `teacher` field (`TrainState`), and the
  compiled update moves them (a pure function of the state)."""

  def __init__(
    self,
    config: mlc.ConfigDict,
    mesh: Any,
    *,
    graphdef: Any,
    rest: Any,
    params: Any,
    param_shardings: Any,
    tx: Any,
    rest_shardings: Any = None,
  ):
    """config: the run's config; mesh: its `MeshContext`; graphdef / rest / params /
    param_shardings: the student (`nnx.split` in its shardings); tx: the RL optimiser;
    rest_shardings: LoRA only (params are the adapters, rest the frozen base): the base's."""
    from postrain.train import _update

    cfg = config
    self.config, t, d = cfg, cfg.teacher, cfg.distill
    student = nnx.merge(graphdef, params, rest)
    student_vocab = int(student.cfg.vocab_size)
    self.ema = t.source == "ema"
    self.info: dict[str, Any] = {}
    self.teacher_params = None  # the fixed teacher's; the EMA teacher's live in the state
    if self.ema:
      self.t_graphdef, self.t_rest, vmap = graphdef, rest, None
      # The state's teacher keeps the student's shardings (the sharded teacher pass's).
      self.t_param_shardings = param_shardings
    else:
      model, vmap, self.info = _teacher.build_teacher(cfg, student_vocab=student_vocab)
      if mesh.multi_process:  # each process holds only its shards of the teacher
        self.t_graphdef, self.teacher_params, self.t_rest, self.t_param_shardings = mesh.place(
          model
        )
      else:
        self.t_graphdef, self.teacher_params, self.t_rest = nnx.split(model, nnx.Param, ...)
        self.t_param_shardings = None
    self.spec = DistillSpec(
      loss=d.loss,
      alpha=float(d.alpha),
      topk=int(d.topk),
      tail=bool(d.tail),
      temperature=float(d.temperature),
      agg=d.agg,
      is_clip=float(d.is_clip),
    )
    if d.loss == "topk" and d.topk > student_vocab:
      raise ValueError(f"config.distill.topk={d.topk} exceeds the vocabulary ({student_vocab})")
    self.update = mesh.shard_state_update(
      _update.make_state_update(
        functools.partial(distill_loss, spec=self.spec),
        tx,
        graphdef,
        rest if rest_shardings is None else None,
        counts_fn=distill_counts,
        microbatch_rows=cfg.rl.microbatch_rows,
        group_size=cfg.rl.group_size,
        after=functools.partial(ema_step, decay=t.ema_decay) if self.ema else None,
        **_update.lora_dropout_kwargs(cfg, "distill"),
      ),
      mesh.state_shardings(tx, params, param_shardings, teacher=self.ema),
      # LoRA: the frozen base is an argument of the compiled update.
      **({} if rest_shardings is None else dict(rest=rest, rest_sh=rest_shardings)),
    )
    # LoRA: the frozen base is an argument of the teacher pass too (the student's, and the EMA
    # teacher's = base + the adapters' moving average), never a constant of the compiled pass.
    lora = rest_shardings is not None
    t_lora = lora and self.ema
    self.teacher_fn = make_teacher_fn(
      self.t_graphdef,
      None if t_lora else self.t_rest,
      graphdef,
      None if lora else rest,
      student_vocab=student_vocab,
      full_logits=d.loss != "pg",
      release_k=int(d.release_k) if d.release else 0,
      vocab_map=vmap,
      jit=not mesh.multi_process,
    )
    if mesh.multi_process:  # one teacher pass over the global batch (`_distill_local.py`)
      from postrain.train import _distill_local

      self.teacher_fn = _distill_local.shard_teacher_fn(
        self.teacher_fn,
        mesh,
        (self.t_param_shardings, rest_shardings) if t_lora else self.t_param_shardings,
        (param_shardings, rest_shardings) if lora else param_shardings,
      )
    if lora:
      inner = self.teacher_fn

      def teacher_fn(t_params, t_tokens, t_valid, s_params, *batch):
        t_params = (t_params, rest) if t_lora else t_params
        return inner(t_params, t_tokens, t_valid, (s_params, rest), *batch)

      self.teacher_fn = teacher_fn

  def initial_teacher(self, params: Any) -> Any:
    """The state's `teacher` field for student `params`: the EMA teacher starts as a copy of the
    student (at construction, and again when distillation starts after SFT); None otherwise."""
    return jax.tree.map(jnp.copy, params) if self.ema else None

  def teacher_of(self, state: Any) -> Any:
    """The teacher's parameters at `state`: the state's EMA teacher or the fixed teacher's."""
    return state.teacher if self.ema else self.teacher_params

  def step(
    self,
    state: Any,
    parts: Any,
    problems: list[Any],
    *,
    record: Any = None,
  ) -> tuple[Any, dict[str, float]]:
    """One OPD / MOPD step from `state` (a `TrainState`) with the RL step's fixed `parts`
    (`_rl_step.RLStepParts`): sample, teacher pass, updates; returns (new state, metrics).

    Each process samples and prepares its own share of the step's groups (one process: all of
    them), see `_distill_local.distill_step`."""
    from postrain.train import _distill_local

    return _distill_local.distill_step(self, state, parts, problems, record=record)
