"""The trainer's mesh plumbing: the mesh and rules from the config, sharded state, sharded jits and
the batches of one or many processes (`postrain.sharding`, `train._distributed`).

With the default config on one device every function here is the identity on values: the numbers
of a one-device run are those of the unsharded trainer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from postrain import _device_put, sharding
from postrain.train import _distributed
from postrain.train._types import TrainState


@dataclasses.dataclass
class MeshContext:
  """The run's mesh, its partition rules and the batch sharding (rows over data x fsdp)."""

  mesh: Mesh
  rules: list[sharding.Rule]
  logical_rules: list[sharding.LogicalRule]
  allow_replication: bool
  batch: NamedSharding
  _slicers: dict[int, Any] = dataclasses.field(default_factory=dict, repr=False)
  _concat: Any = dataclasses.field(default=None, repr=False)

  @property
  def batch_ways(self) -> int:
    """How many pieces the batch dimension is split into."""
    spec = self.batch.spec[0] if self.batch.spec else None
    axes = () if spec is None else (spec,) if isinstance(spec, str) else spec
    return math.prod(self.mesh.shape[a] for a in axes)

  @property
  def multi_process(self) -> bool:
    return jax.process_count() > 1

  @property
  def is_primary(self) -> bool:
    """Process 0 writes the run's files (config, metrics, report); every process checkpoints."""
    return jax.process_index() == 0

  def rule_kwargs(self) -> dict[str, Any]:
    return dict(
      rules=self.rules, logical_rules=self.logical_rules, allow_replication=self.allow_replication
    )

  # -- state ------------------------------------------------------------------------------------

  def param_shardings(self, params: Any) -> Any:
    return sharding.param_shardings(params, self.mesh, **self.rule_kwargs())

  def opt_shardings(self, tx: optax.GradientTransformation, params: Any, p_sh: Any) -> Any:
    abstract = jax.eval_shape(tx.init, params)
    return sharding.opt_state_shardings(tx, abstract, params, p_sh, self.mesh)

  def init_opt_state(self, tx: optax.GradientTransformation, params: Any, p_sh: Any) -> Any:
    """`tx.init(params)` created in the optimiser state's shardings."""
    return jax.jit(tx.init, out_shardings=self.opt_shardings(tx, params, p_sh))(params)

  def place(self, model: nnx.Module) -> tuple[Any, Any, Any, Any]:
    """(graphdef, params, rest, param shardings) of a built model, its weights moved into their
    shards: each device receives only its slices of the host copy (`sharding.place_params`)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    p_sh = self.param_shardings(params)
    params = sharding.place_params(jax.device_get(params), p_sh)
    rest = sharding.place_params(jax.device_get(rest), sharding.replicated(self.mesh))
    return graphdef, params, rest, p_sh

  def init_sharded(self, factory: Callable[[], nnx.Module]) -> tuple[Any, Any, Any, Any]:
    """(graphdef, params, rest, param shardings) of `factory()` created directly in its shards."""
    # The optimiser state is created by the trainer (it owns two optimisers); an identity tx here.
    state = sharding.init_sharded(factory, optax.identity(), self.mesh, **self.rule_kwargs())
    return state.graphdef, state.params, state.rest, state.param_shardings

  # -- jits -------------------------------------------------------------------------------------

  def shard_update(
    self, update_fn: Callable[..., Any], p_sh: Any, o_sh: Any, rest: Any = None, rest_sh: Any = None
  ) -> Callable:
    """The sharded update; with `rest` (LoRA: the frozen base, in `rest_sh`) the returned call
    passes it to every step as an argument of the compiled update."""
    fn = sharding.shard_update(
      update_fn, p_sh, o_sh, self.batch, logical_rules=self.logical_rules, rest_shardings=rest_sh
    )
    if rest is None:
      return fn

    def call(params, opt_state, batch, *extra):
      return fn(params, opt_state, batch, *extra, rest=rest)

    call.lower = lambda params, opt_state, batch, *extra: fn.lower(
      params, opt_state, batch, *extra, rest=rest
    )
    return call

  def shard_state_update(
    self, update_fn: Callable[..., Any], state_sh: Any, rest: Any = None, rest_sh: Any = None
  ) -> Callable:
    """`update(state, batch, *extra) -> (state, aux)` (`_update.make_state_update`) jitted on the
    mesh with the state donated and kept in `state_sh` (`state_shardings`); with `rest` (LoRA:
    the frozen base, in `rest_sh`) the returned call passes it as an argument of the compiled
    update."""
    fn = sharding.shard_state_update(
      update_fn, state_sh, self.batch, logical_rules=self.logical_rules, rest_shardings=rest_sh
    )
    if rest is None:
      return fn

    def call(state, batch, *extra):
      return fn(state, batch, *extra, rest=rest)

    call.lower = lambda state, batch, *extra: fn.lower(state, batch, *extra, rest=rest)
    return call

  def state_shardings(
    self, tx: optax.GradientTransformation, params: Any, p_sh: Any, *, teacher: bool = False
  ) -> Any:
    """The `TrainState` of shardings for a state of `params` (in `p_sh`) and `tx`'s optimiser
    state: rng and step replicated; `teacher` (an EMA teacher in the state): the params'."""
    rep = sharding.replicated(self.mesh)
    o_sh = self.opt_shardings(tx, params, p_sh)
    return TrainState(
      params=p_sh, opt_state=o_sh, rng=rep, step=rep, teacher=p_sh if teacher else None
    )

  def replicate(self, tree: Any) -> Any:
    """Small host or device values (the same on every process) -> arrays replicated on the mesh
    (several processes: global arrays)."""
    rep = sharding.replicated(self.mesh)
    if self.multi_process:
      return _device_put.put(tree, rep)
    return jax.device_put(tree, rep)

  def place_lora(self, model: nnx.Module) -> tuple[Any, Any, Any, Any, Any]:
    """(graphdef, adapters, frozen, adapter shardings, frozen shardings) of a model with LoRA
    adapters: the trainable `nnx.LoRAParam`s and the frozen rest (base weights, possibly
    quantised, and non-parameter state), each moved into its shards."""
    graphdef, lora, base, rest = nnx.split(model, nnx.LoRAParam, nnx.Param, ...)
    frozen = nnx.merge_state(base, rest)
    l_sh, f_sh = self.param_shardings(lora), self.param_shardings(frozen)
    lora = sharding.place_params(jax.device_get(lora), l_sh)
    frozen = sharding.place_params(jax.device_get(frozen), f_sh)
    return graphdef, lora, frozen, l_sh, f_sh

  def shard_logprob_fn(self, fn: Callable[..., Any], p_sh: Any) -> Callable:
    return sharding.shard_logprob_fn(fn, p_sh, self.batch, logical_rules=self.logical_rules)

  def sampler(self, model: nnx.Module, **kwargs: Any) -> sharding.ShardedSampler:
    return sharding.ShardedSampler(model, self.mesh, **self.rule_kwargs(), **kwargs)

  # -- batches ----------------------------------------------------------------------------------

  def item_slice(self, num_items: int, rows_per_item: int = 1) -> slice:
    """The step's items this process loads (`_distributed.local_item_slice`; all on one)."""
    return _distributed.local_item_slice(num_items, self.batch, rows_per_item=rows_per_item)

  def gather_rows(self, local: Any, num_rows: int) -> Any:
    """This process's rows of small host arrays -> the global arrays on every process, in the
    global row order (placed on the mesh, then all-gathered)."""
    return self.to_host(self.from_local(local, num_rows))

  def process_share(self, num_items: int) -> slice:
    """This process's equal contiguous share of host-only work (e.g. an evaluation batch)."""
    return _distributed.process_share(num_items)

  def concat_over_processes(self, local: Any) -> Any:
    """The processes' `process_share` results, concatenated in the global order."""
    return _distributed.concat_over_processes(local)

  def sum_over_processes(self, values: Any) -> np.ndarray:
    return _distributed.sum_over_processes(values)

  def max_over_processes(self, value: int) -> int:
    return _distributed.max_over_processes(value)

  def concat_rows(self, first: Any, second: Any) -> Any:
    """Two batches of global arrays (same fields) -> their rows `[first; second]` split over the
    batch axes (rows move between devices and processes on the mesh, not through the hosts)."""
    if self._concat is None:
      self._concat = jax.jit(
        lambda a, b: jax.tree.map(lambda x, y: jax.numpy.concatenate([x, y], axis=0), a, b),
        out_shardings=self.batch,
      )
    return self._concat(first, second)

  def device_minibatches(self, batch: Any, num: int) -> Iterator[Any]:
    """The `num` consecutive row blocks of a batch of global arrays, each split over the batch
    axes again (rows move between devices and processes on the mesh, not through the hosts)."""
    rows = jax.tree.leaves(batch)[0].shape[0] // num
    if num == 1:
      yield batch
      return
    if rows not in self._slicers:
      self._slicers[rows] = jax.jit(
        lambda tree, start: jax.tree.map(
          lambda x: jax.lax.dynamic_slice_in_dim(x, start, rows, axis=0), tree
        ),
        static_argnums=1,  # a Python int: no host array enters a multi-process jit
        out_shardings=self.batch,
      )
    for i in range(num):
      yield self._slicers[rows](batch, i * rows)

  def from_local(self, local: Any, num_rows: int) -> Any:
    """This process's rows of every array -> global arrays split on the batch dimension."""
    return _distributed.host_to_global(local, self.batch, num_rows)

  def place_rows(self, local: Any, num_rows: int) -> Any:
    """`from_local` for a batch whose arrays may be on the devices already (the sampler's
    output): one process moves them to the batch sharding on the devices (no copy through the
    host); several processes place their host rows (`from_local`)."""
    if not self.multi_process:
      return jax.device_put(local, self.batch)
    return self.from_local(as_numpy(local), num_rows)

  def from_host(self, full: Any) -> Any:
    """Full host arrays (identical on every process) -> global arrays split on the batch."""
    return _distributed.global_from_host(jax.device_get(full), self.batch)

  def minibatches(self, batch: dict[str, np.ndarray], num: int) -> Iterator[Any]:
    """The host batch's `num` consecutive row blocks (whole groups), each placed on the mesh."""
    rows = batch["tokens"].shape[0] // num
    for i in range(num):
      yield self.from_host({k: x[i * rows : (i + 1) * rows] for k, x in batch.items()})

  def mean_metrics(self, auxes: list[Any]) -> dict[str, float]:
    """Per-update aux dicts (device arrays) -> their means on the host."""
    auxes = self.to_host(auxes)
    return {name: float(np.mean([a[name] for a in auxes])) for name in auxes[0]}

  def to_host(self, tree: Any) -> Any:
    """Global arrays -> numpy on every process (an all-gather when several processes run)."""
    return _distributed.to_host(tree) if self.multi_process else jax.device_get(tree)

  @contextlib.contextmanager
  def primary_first(self, name: str) -> Iterator[None]:
    """Process 0 runs the body first (e.g. writing the dataset and tokenizer into the workdir),
    then the others (which find it written); one process: just the body."""
    if not self.multi_process:
      yield
      return
    from jax.experimental import multihost_utils

    if not self.is_primary:
      multihost_utils.sync_global_devices(f"postrain:{name}")
    yield
    if self.is_primary:
      multihost_utils.sync_global_devices(f"postrain:{name}")


def mesh_context(config: mlc.ConfigDict) -> MeshContext:
  """The mesh and rules of `config` (ValueError naming the key when they do not fit the devices
  or the batch sizes; nothing is compiled before this check)."""
  try:
    mesh, kwargs = sharding.from_config(config)
    batch = sharding.batch_sharding(mesh, kwargs["logical_rules"])
  except ValueError as err:
    raise ValueError(f"config.mesh / config.logical_axis_rules: {err}") from None
  ctx = MeshContext(mesh=mesh, batch=batch, **kwargs)
  _check_batch_sizes(config, ctx)
  return ctx


def _check_batch_sizes(c: mlc.ConfigDict, ctx: MeshContext) -> None:
  ways, shape = ctx.batch_ways, dict(ctx.mesh.shape)
  if c.sft.steps and c.sft.batch_size % ways:
    raise ValueError(
      f"config.sft.batch_size: {c.sft.batch_size} rows do not split over the batch mesh axes "
      f"(mesh {shape}: {ways} pieces); make it a multiple of {ways}."
    )
  procs = jax.process_count()
  if procs > 1 and c.sft.steps and c.sft.batch_size % procs:
    raise ValueError(
      f"config.sft.batch_size: {c.sft.batch_size} rows do not split over the {procs} processes "
      "(each loads its own share of every batch); make it a multiple of the process count."
    )
  if procs > 1 and c.mode in ("rl", "opd", "mopd") and c.rl.steps and c.rl.prompts_per_step % procs:
    raise ValueError(
      f"config.rl.prompts_per_step: {c.rl.prompts_per_step} prompts do not split over the {procs} "
      "processes (each samples and scores its own whole groups); make it a multiple of the "
      "process count."
    )
  if procs > 1:
    _check_eval_split(c, procs)
  if c.mode == "rl" and c.rl.steps:
    rows = c.rl.prompts_per_step * c.rl.group_size // c.rl.updates_per_batch
    if rows % ways:
      raise ValueError(
        f"config.rl.prompts_per_step: each update's minibatch (prompts_per_step * group_size / "
        f"updates_per_batch = {rows} rows) does not split over the batch mesh axes (mesh {shape}: "
        f"{ways} pieces)."
      )
  if c.mode == "rl" and c.rl.steps and c.rl.ftis.path:
    _check_ftis_rows(c, ways, shape)


def _check_ftis_rows(c: mlc.ConfigDict, ways: int, shape: dict[str, int]) -> None:
  """F-TIS: the foreign rows are their own block of the global batch, placed over the batch axes
  like the own rows (`_ftis.ForeignRollouts.extend_global`)."""
  rl = c.rl
  foreign = rl.ftis.prompts_per_step * rl.group_size
  if foreign % ways:
    raise ValueError(
      f"config.rl.ftis.prompts_per_step: the {foreign} foreign rows of a step (ftis.prompts_per_step"
      f" * group_size) do not split over the batch mesh axes (mesh {shape}: {ways} pieces; with "
      "several processes each holds its slice of the foreign block); make them a multiple of "
      f"{ways}."
    )
  rows = (rl.prompts_per_step + rl.ftis.prompts_per_step) * rl.group_size // rl.updates_per_batch
  if rows % ways:
    raise ValueError(
      f"config.rl.ftis.prompts_per_step: each update's minibatch of an F-TIS batch ((prompts_per_step"
      f" + ftis.prompts_per_step) * group_size / updates_per_batch = {rows} rows) does not split "
      f"over the batch mesh axes (mesh {shape}: {ways} pieces)."
    )


def _check_eval_split(c: mlc.ConfigDict, procs: int) -> None:
  """Each process evaluates its equal share of every evaluation batch (`_rollout.evaluate`)."""
  from postrain.train import _rollout

  n, size = c.eval.num_problems, _rollout.EVAL_BATCH_SIZE
  batches = [size] * (n // size) + ([n % size] if n % size else [])
  if any(b % procs for b in batches):
    raise ValueError(
      f"config.eval.num_problems: {n} problems (evaluated in batches of {size}) do not split over "
      f"the {procs} processes (each evaluates its own share of every batch); make every batch a "
      "multiple of the process count."
    )


@contextlib.contextmanager
def host_memory() -> Iterator[None]:
  """Arrays created inside live in host (CPU) memory, e.g. imported weights before they are
  placed shard by shard, so no accelerator ever holds a whole tensor. A no-op on CPU backends."""
  if jax.default_backend() == "cpu":
    yield
    return
  try:
    cpu = jax.local_devices(backend="cpu")[0]
  except RuntimeError:  # no CPU backend (JAX_PLATFORMS without cpu): the default device
    yield
    return
  with jax.default_device(cpu):
    yield


def as_numpy(tree: Any) -> Any:
  """Local (process-complete) arrays -> numpy, for host-side slicing of a batch."""
  return jax.tree.map(np.asarray, tree)
