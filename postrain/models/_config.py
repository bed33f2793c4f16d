"""Decoder configuration: one frozen dataclass for the Llama and Qwen3 families, and named configs."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

FAMILIES = ("llama", "qwen3")
DTYPES = ("float32", "bfloat16")
# Activation rematerialisation of the decoder blocks in a training forward pass (`Decoder`):
#   "none"       keep every block's activations for the backward pass (fastest, most memory);
#   "block"      keep only each block's input, recompute the block in the backward pass
#                (`jax.checkpoint` with `nothing_saveable`; memory ~ one block's activations);
#   "save_dots"  keep the matmul outputs, recompute the rest (`dots_saveable`: norms, RoPE,
#                softmax, SwiGLU's elementwise work);
#   "save_dots_no_batch"  keep the weight matmuls' outputs, recompute the attention scores
#                (`dots_with_no_batch_dims_saveable`, MaxText's "minimal").
REMAT_POLICIES = ("none", "block", "save_dots", "save_dots_no_batch")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3 style RoPE frequency scaling (HF `rope_type="llama3"`).

  Wavelengths longer than `original_max_position_embeddings / low_freq_factor` are divided by
  `factor`, shorter than `original_max_position_embeddings / high_freq_factor` are kept, and the
  band in between is interpolated linearly in `original_max_position_embeddings / wavelength`.
  """

  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a decoder-only transformer (pre-norm, RoPE, GQA, SwiGLU).

  `family="qwen3"` adds RMSNorm on each query/key head before RoPE (`qk_norm`); `"llama"` covers
  Llama 2/3 and SmolLM2. `dtype` is the activation dtype, `param_dtype` the storage dtype of the
  weights; norms, softmax and the logits are computed in float32 whatever they are.
  `attention_block` is the number of cache slots per step of the cached-attention loop (a speed
  knob, not part of the architecture). `remat` (one of `REMAT_POLICIES`) chooses what a training
  forward pass keeps for the backward pass (a memory knob; decoding with a cache never remats).
  """

  vocab_size: int
  num_layers: int
  embed_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  family: str = "llama"
  rope_theta: float = 10_000.0
  rope_scaling: RopeScaling | None = None
  norm_eps: float = 1e-6
  tie_embeddings: bool = True
  max_position_embeddings: int = 8192
  dtype: str = "float32"
  param_dtype: str = "float32"
  bos_token_id: int = -1
  eos_token_id: int = -1
  pad_token_id: int = -1
  attention_block: int = 128
  remat: str = "none"

  def __post_init__(self):
    # Accept jnp dtypes as well as names, store names: the config stays hashable and printable.
    for field in ("dtype", "param_dtype"):
      value = getattr(self, field)
      try:
        name = jnp.dtype(value).name
      except TypeError as e:
        raise ValueError(f"ModelConfig.{field}: unknown dtype {value!r}.") from e
      if name not in DTYPES:
        raise ValueError(f"ModelConfig.{field} must be one of {list(DTYPES)}, got {value!r}.")
      object.__setattr__(self, field, name)
    if self.family not in FAMILIES:
      raise ValueError(f"ModelConfig.family must be one of {list(FAMILIES)}, got {self.family!r}.")
    for field in ("vocab_size", "num_layers", "embed_dim", "num_heads", "num_kv_heads", "mlp_dim"):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"ModelConfig.{field} must be a positive int, got {value!r}.")
    if not isinstance(self.head_dim, int) or self.head_dim < 2 or self.head_dim % 2:
      raise ValueError(
        f"ModelConfig.head_dim must be a positive even int (RoPE), got {self.head_dim!r}."
      )
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
        f"ModelConfig.num_heads={self.num_heads} must be a multiple of "
        f"num_kv_heads={self.num_kv_heads} (grouped-query attention)."
      )
    if self.attention_block < 1:
      raise ValueError(f"ModelConfig.attention_block must be >= 1, got {self.attention_block}.")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(
        f"ModelConfig.remat must be one of {list(REMAT_POLICIES)}, got {self.remat!r}."
      )
    if self.rope_theta <= 0 or self.norm_eps <= 0:
      raise ValueError("ModelConfig.rope_theta and norm_eps must be > 0.")

  @property
  def qk_norm(self) -> bool:
    return self.family == "qwen3"

  @property
  def jnp_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def jnp_param_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  def replace(self, **overrides: Any) -> ModelConfig:
    return dataclasses.replace(self, **overrides)


_CONFIGS: dict[str, ModelConfig] = {
    # Test model: small enough that a forward pass compiles in a second.
    "tiny": ModelConfig(
        vocab_size=512, num_layers=2, embed_dim=64, num_heads=4, num_kv_heads=2, head_dim=16,
        mlp_dim=128, family="llama", rope_theta=10_000.0, norm_eps=1e-6, tie_embeddings=True,
        max_position_embeddings=2048,
    ),
    "tiny-qwen3": ModelConfig(
        vocab_size=32_000, num_layers=4, embed_dim=256, num_heads=4, num_kv_heads=4, head_dim=64,
        mlp_dim=1024, family="qwen3", rope_theta=1_000_000.0, norm_eps=1e-6, tie_embeddings=True,
        max_position_embeddings=4096,
    ),
    # HuggingFaceTB/SmolLM2-135M(-Instruct); token ids are the instruct tokenizer's.
    "smollm2-135m": ModelConfig(
        vocab_size=49_152, num_layers=30, embed_dim=576, num_heads=9, num_kv_heads=3, head_dim=64,
        mlp_dim=1536, family="llama", rope_theta=100_000.0, norm_eps=1e-5, tie_embeddings=True,
        max_position_embeddings=8192, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    ),
    # Qwen/Qwen3-0.6B.
    "qwen3-0.6b": ModelConfig(
        vocab_size=151_936, num_layers=28, embed_dim=1024, num_heads=16, num_kv_heads=8,
        head_dim=128, mlp_dim=3072, family="qwen3", rope_theta=1_000_000.0, norm_eps=1e-6,
        tie_embeddings=True, max_position_embeddings=40_960, bos_token_id=-1,
        eos_token_id=151_645, pad_token_id=151_643,
    ),
    # meta-llama/Llama-3.2-1B.
    "llama3.2-1b": ModelConfig(
        vocab_size=128_256, num_layers=16, embed_dim=2048, num_heads=32, num_kv_heads=8,
        head_dim=64, mlp_dim=8192, family="llama", rope_theta=500_000.0,
        rope_scaling=RopeScaling(32.0, 1.0, 4.0, 8192), norm_eps=1e-5, tie_embeddings=True,
        max_position_embeddings=131_072, bos_token_id=128_000, eos_token_id=128_001,
    ),
}  # fmt: skip


def config_names() -> list[str]:
  """Names accepted by `get_config`."""
  return sorted(_CONFIGS)


def get_config(name: str, **overrides: Any) -> ModelConfig:
  """Returns the named config, with `overrides` (e.g. `dtype="bfloat16"`) applied.

  Names: "tiny" (tests), "tiny-qwen3", "smollm2-135m", "qwen3-0.6b", "llama3.2-1b".
  """
  if name not in _CONFIGS:
    raise ValueError(f"Unknown model config {name!r}; known: {config_names()}.")
  cfg = _CONFIGS[name]
  unknown = set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)}
  if unknown:
    raise ValueError(f"get_config({name!r}): unknown ModelConfig fields {sorted(unknown)}.")
  return dataclasses.replace(cfg, **overrides) if overrides else cfg
