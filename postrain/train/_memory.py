"""The update's memory, as the compiler plans it, checked against the device before training.

`jax.jit(...).lower(...).compile().memory_analysis()` gives the bytes of the arguments, outputs,
aliased (donated) buffers and temporaries of the compiled update; the peak the update needs is
arguments + outputs - aliased + temporaries. The trainer prints it at startup and refuses a config
whose peak exceeds the device memory, naming the keys that lower it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax


def _lower_keys(section: str) -> tuple[str, ...]:
  """The keys that lower the update's peak, named in the refusal."""
  keys = (
    f"{section}.microbatch_rows (gradient accumulation over fewer rows at a time)",
    "model.remat (e.g. 'block': recompute each block in the backward pass)",
  )
  if section == "rl":
    keys += ("rl.updates_per_batch (smaller minibatches; changes the algorithm)",)
  return keys


_GB = 1024**3


@dataclasses.dataclass(frozen=True)
class UpdateMemory:
  """Bytes of one compiled update (`compiled.memory_analysis()`)."""

  arguments: int
  outputs: int
  aliased: int
  temporaries: int
  code: int

  @property
  def peak(self) -> int:
    """Arguments + outputs - donated (aliased) + temporaries + generated code."""
    return self.arguments + self.outputs - self.aliased + self.temporaries + self.code

  def describe(self) -> str:
    g = lambda b: f"{b / _GB:.2f} GiB"  # noqa: E731
    return (
      f"peak {g(self.peak)} = arguments {g(self.arguments)} + outputs {g(self.outputs)} - "
      f"donated {g(self.aliased)} + temporaries {g(self.temporaries)} + code {g(self.code)}"
    )


def analyse(compiled: Any) -> UpdateMemory:
  """`UpdateMemory` of a compiled computation (`jax.jit(f).lower(...).compile()`)."""
  m = compiled.memory_analysis()
  if m is None:
    raise RuntimeError("this backend gives no memory analysis of a compiled computation")
  return UpdateMemory(
    arguments=int(m.argument_size_in_bytes),
    outputs=int(m.output_size_in_bytes),
    aliased=int(m.alias_size_in_bytes),
    temporaries=int(m.temp_size_in_bytes),
    code=int(getattr(m, "generated_code_size_in_bytes", 0) or 0),
  )


def device_memory_bytes(limit_gb: float = 0.0) -> tuple[int, str]:
  """(bytes, where from): `limit_gb` when > 0, else the first device's memory limit (GPU/TPU
  `memory_stats()["bytes_limit"]`), else the host's physical RAM (CPU)."""
  if limit_gb > 0:
    return int(limit_gb * _GB), f"config.memory.limit_gb={limit_gb}"
  dev = jax.local_devices()[0]
  stats = None
  try:
    stats = dev.memory_stats()
  except Exception:  # backends without memory stats
    stats = None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), f"{dev.device_kind} memory"
  ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return int(ram), "physical RAM"


def check_update_memory(
  section: str, lowered: Any, *, limit_gb: float = 0.0, log: Any = print
) -> UpdateMemory:
  """Compiles `lowered` (the `section` = "rl" or "sft" update), prints its memory plan and raises
  MemoryError when the peak exceeds the device (or `limit_gb`), naming the config keys that
  lower it."""
  name = section
  mem = analyse(lowered.compile())
  limit, source = device_memory_bytes(limit_gb)
  log(f"[memory] {name} update: {mem.describe()}; limit {limit / _GB:.2f} GiB ({source})")
  if mem.peak > limit:
    raise MemoryError(
      f"the {name} update needs {mem.peak / _GB:.2f} GiB (compiler estimate: {mem.describe()}) "
      f"but the limit is {limit / _GB:.2f} GiB ({source}). Lower it with config."
      + "; config.".join(_lower_keys(section))
      + " (config.memory.check=False skips this check)."
    )
  return mem


def abstract_rl_batch(config: Any) -> Any:
  """Shapes of one RL minibatch at the longest rollout (T = rl.cache_size, the prompt plus the
  response never exceed it): what `_rl_step.rl_batch` (+ ref_logp, F-TIS sampler_logp and is_weights) builds."""
  import jax.numpy as jnp

  rl = config.rl
  groups = rl.prompts_per_step + (rl.ftis.prompts_per_step if rl.ftis.path else 0)
  b, t = groups * rl.group_size // rl.updates_per_batch, rl.cache_size
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
  from postrain.train._types import RLBatch

  return RLBatch(
    tokens=jax.ShapeDtypeStruct((b, t), jnp.int32),
    valid=jax.ShapeDtypeStruct((b, t), jnp.bool_),
    mask=f32(b, t),
    loss_mask=f32(b, t),
    old_logp=f32(b, t),
    advantages=f32(b, t) if rl.algorithm == "scrl" else f32(b),
    rewards=f32(b),
    ref_logp=f32(b, t) if rl.kl_coef > 0 else None,
    sampler_logp=f32(b, t) if rl.ftis.path else None,
    is_weights=f32(b, t) if rl.ftis.path else None,
  )


def abstract_sft_batch(config: Any) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes of one SFT batch (`_data.sft_batch`)."""
  import jax.numpy as jnp

  b, t = config.sft.batch_size, config.sft.max_len
  return {
    "tokens": jax.ShapeDtypeStruct((b, t), jnp.int32),
    "valid": jax.ShapeDtypeStruct((b, t), jnp.bool_),
    "loss_mask": jax.ShapeDtypeStruct((b, t), jnp.float32),
  }


def should_check(config: Any) -> bool:
  """`config.memory.check`: "auto" checks imported models (source hf / gguf) only."""
  check = config.memory.check
  return config.model.source != "scratch" if check == "auto" else check == "on"
