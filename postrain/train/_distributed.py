"""Multi-host helpers: `jax.distributed` start-up, per-process data, host batches -> global arrays.

One process runs per host (a TPU VM worker, or one per GPU node / per GPU). Every process runs the
same program on the same config; the step's prompts are a function of (seed, step), so each
process computes the same list and keeps the rows its devices hold (`local_rows`). Host-local
batches become global `jax.Array`s with `host_to_global`, checkpoints are written and read by all
processes together (orbax), and a checkpoint restores into any mesh by giving orbax the new
shardings as the abstract target (`postrain.sharding.abstract_target`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding

_LOG = logging.getLogger(__name__)


def _get(cfg: Any, key: str, default: Any) -> Any:
  if cfg is None:
    return default
  value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
  return default if value is None else value


def initialize_distributed(cfg: Any = None) -> bool:
  """Starts `jax.distributed` for a multi-process run; a no-op for a single process.

  Reads `cfg.distributed` (or `cfg` itself when it has no `distributed` key; a dict works too):
    coordinator_address: "host:port" of process 0 ("" = from `JAX_COORDINATOR_ADDRESS`);
    num_processes: process count (0 = from `JAX_NUM_PROCESSES`, else 1);
    process_id: this process's index (-1 = from `JAX_PROCESS_ID`);
    local_device_ids: devices this process uses, e.g. "0" for one process per GPU ("" = all);
    auto: let JAX detect a managed cluster (Cloud TPU slice, SLURM, Open MPI, Kubernetes).
  Must run before anything touches a JAX device. Returns True when running multi-process.
  """
  d = _get(cfg, "distributed", cfg)
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  if bool(_get(d, "auto", False)):
    jax.distributed.initialize()
    _LOG.info(
      "jax.distributed (auto-detected): process %d of %d", jax.process_index(), jax.process_count()
    )
    return jax.process_count() > 1
  address = _get(d, "coordinator_address", "") or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  num = int(_get(d, "num_processes", 0) or os.environ.get("JAX_NUM_PROCESSES", 1))
  pid = int(_get(d, "process_id", -1))
  pid = int(os.environ.get("JAX_PROCESS_ID", -1)) if pid < 0 else pid
  if num <= 1:
    return False
  if not address:
    raise ValueError(
      "config.distributed.coordinator_address (or JAX_COORDINATOR_ADDRESS) is required "
      f"for num_processes={num}."
    )
  if not 0 <= pid < num:
    raise ValueError(
      f"config.distributed.process_id must be in [0, {num}), got {pid} "
      "(set it, or JAX_PROCESS_ID, per process)."
    )
  ids = str(_get(d, "local_device_ids", "") or "")
  local = [int(i) for i in ids.split(",")] if ids else None
  jax.distributed.initialize(
    coordinator_address=address, num_processes=num, process_id=pid, local_device_ids=local
  )
  _LOG.info("jax.distributed: process %d of %d, coordinator %s", pid, num, address)
  return True


def local_rows(sharding: NamedSharding, num_rows: int) -> slice:
  """The rows (dimension 0) of a `[num_rows, ...]` array that this process's devices hold.

  Whole range when the batch axes are replicated across processes; ValueError when this process's
  rows are not contiguous (a mesh whose batch axes interleave processes).
  """
  idx = sharding.addressable_devices_indices_map((num_rows,))
  starts = sorted(
    {(s[0].start or 0, num_rows if s[0].stop is None else s[0].stop) for s in idx.values()}
  )
  lo, hi = starts[0][0], starts[0][1]
  for a, b in starts[1:]:
    if a > hi:
      raise ValueError(
        f"this process's rows {starts} are not contiguous; order the mesh devices by process."
      )
    hi = max(hi, b)
  return slice(lo, hi)


def local_item_slice(num_items: int, sharding: NamedSharding, *, rows_per_item: int = 1) -> slice:
  """The items (e.g. a step's prompts) this process owns: item i fills rows `[i * rows_per_item,
  (i + 1) * rows_per_item)` of the global batch (the RL group layout: `rows_per_item =
  group_size`), and a process owns the items of the rows its devices hold (`local_rows`).

  With the batch axes ordered by process (`jax.make_mesh` on every backend here), process p owns
  the p-th contiguous block: the global batch is process 0's rows, then process 1's, ...
  """
  rows = local_rows(sharding, num_items * rows_per_item)
  if rows.start % rows_per_item or rows.stop % rows_per_item:
    raise ValueError(
      f"this process holds rows [{rows.start}, {rows.stop}), which split groups of {rows_per_item}; "
      "make the per-process batch a multiple of the group size."
    )
  return slice(rows.start // rows_per_item, rows.stop // rows_per_item)


def local_items(
  items: Sequence[Any], sharding: NamedSharding, *, rows_per_item: int = 1
) -> list[Any]:
  """This process's share of the step's items (`local_item_slice`)."""
  return list(items[local_item_slice(len(items), sharding, rows_per_item=rows_per_item)])


def sum_over_processes(values: Any) -> np.ndarray:
  """The sum over processes of small host counts (int32), identical on every process."""
  from jax.experimental import multihost_utils

  local = np.asarray(values, np.int32)
  if jax.process_count() == 1:
    return local
  return np.asarray(multihost_utils.process_allgather(local)).sum(axis=0)


def max_over_processes(value: int) -> int:
  """The largest of the processes' values of a host int, identical on every process."""
  if jax.process_count() == 1:
    return int(value)
  from jax.experimental import multihost_utils

  return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int32))))


def process_share(num_items: int) -> slice:
  """This process's equal contiguous share of `num_items` host items (process 0 first); ValueError
  when the process count does not divide them."""
  procs, pid = jax.process_count(), jax.process_index()
  if num_items % procs:
    raise ValueError(f"{num_items} items do not split over the {procs} processes.")
  each = num_items // procs
  return slice(pid * each, (pid + 1) * each)


def concat_over_processes(local: Any) -> Any:
  """Every process's equal-shaped host arrays concatenated on dimension 0 in process order (the
  inverse of `process_share`), identical on every process."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, local)
  from jax.experimental import multihost_utils

  stacked = multihost_utils.process_allgather(local)  # [P, ...] per leaf
  return jax.tree.map(lambda x: np.asarray(x).reshape(-1, *np.shape(x)[2:]), stacked)


def host_to_global(local: Any, sharding: NamedSharding, num_rows: int) -> Any:
  """Host-local batch rows (the `local_rows` slice of every array) -> global `jax.Array`s.

  Each array of `local` has this process's rows on dimension 0; the result has `num_rows` rows,
  split over the devices as `sharding` says (`jax.make_array_from_process_local_data`).
  """
  rows = local_rows(sharding, num_rows)

  def one(x):
    x = np.asarray(x)
    if x.shape[0] != rows.stop - rows.start:
      raise ValueError(
        f"host batch array of shape {x.shape}: expected {rows.stop - rows.start} rows (this "
        f"process's rows [{rows.start}, {rows.stop}) of {num_rows})."
      )
    return jax.make_array_from_process_local_data(sharding, x, (num_rows, *x.shape[1:]))

  return jax.tree.map(one, local)


def global_from_host(full: Any, sharding: NamedSharding) -> Any:
  """Full host arrays that every process holds identically -> global arrays (each process copies
  only the slices its devices hold)."""

  def one(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  return jax.tree.map(one, full)


def to_host(tree: Any) -> Any:
  """Global arrays -> full numpy arrays on every process (an all-gather; for metrics and tests)."""
  from jax.experimental import multihost_utils

  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def is_primary() -> bool:
  """Whether this is process 0 (the one that writes the run's files and prints its summary)."""
  return jax.process_index() == 0


def allgather_json(value: Any) -> list[Any]:
  """Every process's small JSON-serialisable `value`, in process order, on every process (its
  UTF-8 bytes padded to the longest and all-gathered); one process: `[value]`."""
  import json

  if jax.process_count() == 1:
    return [value]
  from jax.experimental import multihost_utils

  data = np.frombuffer(json.dumps(value).encode(), np.uint8)
  size = max_over_processes(data.size)
  buf = np.zeros(size + 1, np.uint8)  # never empty
  buf[: data.size] = data
  gathered = np.asarray(multihost_utils.process_allgather(buf))
  return [json.loads(bytes(row).rstrip(b"\0").decode()) for row in gathered]
