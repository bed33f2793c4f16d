"""The optional stages of an RL step as a registry: a name chooses a function, its place in the
step, its config sub-section with defaults, and its checks (like `algorithms.py` for losses).

An entry (`Stage`) names
  * `fn`: `fn(value, ctx) -> value` or `(value, metrics)`: the stage's input at its `place`
    and the new one (plus metrics of the step, dict of floats); `ctx` (a `StageContext`) holds
    what else the step knows there;
  * `place`: where `_rl_step.rl_step` calls it (`PLACES`), in registry order:
      "prompts"    value: this process's prompts (lists of token ids), one per problem
      "rewards"    value: the step's rewards f32[B] (numpy, all rows), `ctx.lengths` beside them
      "loss_mask"  value: this process's loss mask f32[B, T] (0 / 1), `ctx.zero_variance` bool[B]
  * `section`: its own sub-config `config.rl.<name>` with its defaults (`base_config` adds it, so
    `--config.rl.<name>.<key>=...` works from the command line);
  * `check`: `check(config, need)` raising through `need(ok, key, message)` (`config.validate`);
  * `enabled`: `enabled(config.rl) -> bool`; default: `config.rl.<name>.enabled` when the section
    has that key, else always on.

`config.rl.stages` adds a user's stages without editing postrain: import strings
`"package.module:ENTRY"` naming `Stage` objects; `use(config, path)` (in a config file) records
one and adds its section with the defaults. They run after the built-in stages of their place.

The stages whose inputs are the trainer's own objects (SCRL's curriculum and subproblem rewards,
F-TIS's foreign rows, the multi-turn environment, LoRA's sampling model) are called by name in
`_rl_step.rl_step` (see the table in its docstring).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from postrain import advantages
from postrain._validation import import_attr
from postrain.train import _smepo

PLACES = ("prompts", "rewards", "loss_mask")


@dataclasses.dataclass(frozen=True)
class StageContext:
  """What a stage may read besides its value (fields a place does not know are None).

  config     the run's config (`rl` = `config.rl`)
  data       the run's `TaskData` (tokenizer, prompts, verifier)
  problems   this process's problems of the step (its share of whole groups)
  mesh       the run's `MeshContext` (per-process sums and gathers)
  step       the trainer step (a Python int), `progress` the RL phase's progress in [0, 1]
  offset, total   this process's first problem index and the step's problem count
  lengths    "rewards": the responses' lengths i32[B] (all rows)
  zero_variance   "loss_mask": bool[B], the rows of groups without reward variance
  """

  rl: Any
  config: Any = None
  data: Any = None
  problems: Any = None
  mesh: Any = None
  step: int | None = None
  progress: float = 0.0
  offset: int = 0
  total: int = 0
  lengths: Any = None
  zero_variance: Any = None

  def replace(self, **kwargs: Any) -> StageContext:
    return dataclasses.replace(self, **kwargs)


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  fn: Callable[[Any, StageContext], Any]
  place: str
  section: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  check: Callable[[Any, Callable[[bool, str, str], None]], None] | None = None
  enabled: Callable[[Any], bool] | None = None

  def is_enabled(self, rl: Any) -> bool:
    if self.enabled is not None:
      return bool(self.enabled(rl))
    if "enabled" in self.section:
      return bool(rl[self.name].enabled)
    return True


# -- the built-in stages ------------------------------------------------------------------------


def _smepo_prompts(prompts: list[list[int]], ctx: StageContext):
  return _smepo.smepo_stage(
    ctx.data, ctx.problems, prompts, rl=ctx.rl, seed=ctx.config.seed, step=ctx.step,
    mesh=ctx.mesh, offset=ctx.offset, total=ctx.total,
  )  # fmt: skip


def _check_smepo(c: Any, need: Callable[[bool, str, str], None]) -> None:
  s = c.rl.smepo
  need(0 <= s.fraction <= 1, "rl.smepo.fraction", "must be in [0, 1]")
  need(0 <= s.prefix_ratio <= 1, "rl.smepo.prefix_ratio", "must be in [0, 1]")
  need(
    s.template == "auto" or ("{prompt}" in s.template and "{trace}" in s.template),
    "rl.smepo.template",
    "must be 'auto' or contain the fields {prompt} and {trace}",
  )


def dapo_filter(loss_mask, ctx: StageContext):
  """DAPO dynamic sampling: rows of groups without reward variance carry no signal, their loss
  mask is zeroed. loss_mask f32[B, T], ctx.zero_variance bool[B] -> f32[B, T]."""
  import jax.numpy as jnp

  return loss_mask * (~ctx.zero_variance)[:, None].astype(jnp.float32)


def temporal_credit(loss_mask, ctx: StageContext):
  """The temporal credit window (`advantages.temporal_window`) at training progress
  `ctx.progress` in [0, 1]: early in training only the last tokens of each response carry loss,
  the window growing to the whole response by `rl.temporal.end_progress`. f32[B, T] -> f32[B, T]."""
  temporal = ctx.rl.temporal
  return advantages.temporal_window(
    loss_mask,
    ctx.progress,
    start=0.0,
    end=temporal.end_progress,
    rho0=1.0 - temporal.start_frac,
  )


REGISTRY: dict[str, Stage] = {
  s.name: s
  for s in (
    # SMEPO (arXiv 2605.25198): masked expert traces in front of a fraction of the RL prompts.
    Stage(
      "smepo",
      _smepo_prompts,
      "prompts",
      # fraction: of each step's prompts (the paper's code guides all of them); template: "auto"
      # or a format string with {prompt} and {trace}; prefix_ratio: share of the trace shown.
      section=dict(enabled=False, fraction=1.0, template="auto", prefix_ratio=1.0),
      check=_check_smepo,
    ),
    # DAPO: drop zero-variance groups from the update (the flat key `rl.dynamic_sampling`,
    # which the "dapo" algorithm's defaults set).
    Stage("dynamic_sampling", dapo_filter, "loss_mask", enabled=lambda rl: rl.dynamic_sampling),
    # Temporal credit window: start_frac: credit only the last 25% of each response at the
    # start; end_progress: the window covers the whole response from this progress on.
    Stage(
      "temporal",
      temporal_credit,
      "loss_mask",
      section=dict(enabled=False, start_frac=0.25, end_progress=0.5),
    ),
  )
}


# -- the registry's use -------------------------------------------------------------------------


def _user_stage(path: str) -> Stage:
  entry = import_attr(path, "config.rl.stages: cannot import stage", "package.module:ENTRY")
  if not isinstance(entry, Stage):
    raise ValueError(f"config.rl.stages: {path!r} is not a postrain.train.stages.Stage")
  return entry


def entries(rl: Any) -> list[Stage]:
  """The built-in stages, then the user's of `rl.stages` (import strings)."""
  return list(REGISTRY.values()) + [_user_stage(p) for p in rl.get("stages", ())]


def run(place: str, value: Any, ctx: StageContext) -> tuple[Any, dict[str, float]]:
  """`value` through the enabled stages of `place`, in order: (the new value, their metrics)."""
  metrics: dict[str, float] = {}
  for stage in entries(ctx.rl):
    if stage.place == place and stage.is_enabled(ctx.rl):
      out = stage.fn(value, ctx)
      value, more = out if isinstance(out, tuple) else (out, {})
      metrics.update(more)
  return value, metrics


def add_sections(rl: Any) -> None:
  """Adds every built-in stage's sub-config `rl.<name>` with its defaults (`base_config`)."""
  import ml_collections as mlc

  for entry in REGISTRY.values():
    if entry.section:
      rl[entry.name] = mlc.ConfigDict(dict(entry.section))


def use(c: Any, path: str) -> Any:
  """Adds the user's stage `"package.module:ENTRY"` to config `c` (in a config file): appends it
  to `c.rl.stages` and adds its section `c.rl.<name>` with its defaults; returns `c`."""
  import ml_collections as mlc

  entry = _user_stage(path)
  if entry.name in REGISTRY or (entry.section and entry.name in c.rl):
    raise ValueError(f"config.rl.stages: {path!r}: the name {entry.name!r} is taken")
  with c.unlocked():
    c.rl.stages = (*c.rl.stages, path)
    if entry.section:
      c.rl[entry.name] = mlc.ConfigDict(dict(entry.section))
  return c


def validate(c: Any, need: Callable[[bool, str, str], None]) -> None:
  """Every stage's place and checks (a user stage must import and name a section it has)."""
  for entry in entries(c.rl):
    need(entry.place in PLACES, "rl.stages", f"{entry.name!r}: place must be one of {PLACES}")
    if entry.section:
      need(entry.name in c.rl, "rl.stages", f"{entry.name!r}: config.rl.{entry.name} is missing")
    if entry.check is not None:
      entry.check(c, need)
