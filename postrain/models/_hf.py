"""Hugging Face checkpoints (Llama / Qwen3 `config.json` + safetensors) <-> `Decoder`.

Import reads one tensor at a time from memory-mapped safetensors files, converts it to postrain's
einsum layout, casts it to `param_dtype` and places it on the device before reading the next, so
no whole-model host copy is made.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from postrain.models._config import ModelConfig, RopeScaling
from postrain.models._decoder import Decoder
from postrain.models._layers import abstract_params
from postrain.models._safetensors import SafetensorsFile, save_file

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
Path = tuple[str | int, ...]


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """One checkpoint tensor: its name and shape there, where it goes, and the two layout maps."""

  name: str
  shape: tuple[int, ...]
  path: Path
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_theirs: Callable[[np.ndarray], np.ndarray]


def _linear(out_dim: int, in_dims: tuple[int, ...]) -> tuple[Callable, Callable]:
  """torch Linear weight [out, in] <-> ours [in..., out...]: transpose, then split the axes."""
  in_size = int(np.prod(in_dims))
  return (lambda w: w.T.reshape(*in_dims, -1)), (lambda w: w.reshape(in_size, out_dim).T)


def _linear_out(in_dim: int, out_dims: tuple[int, ...]) -> tuple[Callable, Callable]:
  """torch Linear weight [out, in] with `out` split into `out_dims` (e.g. [D, N*H] -> [D, N, H])."""
  out_size = int(np.prod(out_dims))
  return (lambda w: w.T.reshape(in_dim, *out_dims)), (lambda w: w.reshape(in_dim, out_size).T)


def hf_tensor_specs(cfg: ModelConfig) -> list[TensorSpec]:
  """The tensors of an HF Llama/Qwen3 checkpoint for `cfg`, in load order."""
  d, n, k, h, f, v = (cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim,
                      cfg.vocab_size)  # fmt: skip
  ident = (lambda w: w), (lambda w: w)
  specs = [TensorSpec("model.embed_tokens.weight", (v, d), ("embedding",), *ident)]
  for i in range(cfg.num_layers):
    pre, at = f"model.layers.{i}.", ("layers", i, "attn")
    specs += [
      TensorSpec(pre + "input_layernorm.weight", (d,), ("layers", i, "attn_norm", "scale"), *ident),
      TensorSpec(pre + "self_attn.q_proj.weight", (n * h, d), (*at, "q"), *_linear_out(d, (n, h))),
      TensorSpec(pre + "self_attn.k_proj.weight", (k * h, d), (*at, "k"), *_linear_out(d, (k, h))),
      TensorSpec(pre + "self_attn.v_proj.weight", (k * h, d), (*at, "v"), *_linear_out(d, (k, h))),
      TensorSpec(pre + "self_attn.o_proj.weight", (d, n * h), (*at, "o"), *_linear(d, (n, h))),
    ]
    if cfg.qk_norm:
      specs += [
        TensorSpec(pre + "self_attn.q_norm.weight", (h,), (*at, "q_norm", "scale"), *ident),
        TensorSpec(pre + "self_attn.k_norm.weight", (h,), (*at, "k_norm", "scale"), *ident),
      ]
    specs += [
        TensorSpec(pre + "post_attention_layernorm.weight", (d,), ("layers", i, "mlp_norm", "scale"), *ident),
        TensorSpec(pre + "mlp.gate_proj.weight", (f, d), ("layers", i, "mlp", "gate"), *_linear(f, (d,))),
        TensorSpec(pre + "mlp.up_proj.weight", (f, d), ("layers", i, "mlp", "up"), *_linear(f, (d,))),
        TensorSpec(pre + "mlp.down_proj.weight", (d, f), ("layers", i, "mlp", "down"), *_linear(d, (f,))),
    ]  # fmt: skip
  specs.append(TensorSpec("model.norm.weight", (d,), ("final_norm", "scale"), *ident))
  if not cfg.tie_embeddings:
    specs.append(TensorSpec("lm_head.weight", (v, d), ("lm_head",), *_linear(v, (d,))))
  return specs


# ---------------------------------------------------------------------------------------------
# Config translation.


def _rope(hf: dict[str, Any]) -> tuple[float, RopeScaling | None]:
  # transformers >= 5 writes `rope_parameters`; older configs (and the hub) `rope_theta`/`rope_scaling`.
  params = hf.get("rope_parameters") or {}
  theta = hf.get("rope_theta", params.get("rope_theta", 10_000.0))
  scaling = hf.get("rope_scaling") or params
  kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
  if kind == "default":
    return float(theta), None
  if kind != "llama3":
    raise ValueError(f"config.json: rope scaling type {kind!r} is not supported (only 'llama3').")
  return float(theta), RopeScaling(
    factor=float(scaling["factor"]),
    low_freq_factor=float(scaling["low_freq_factor"]),
    high_freq_factor=float(scaling["high_freq_factor"]),
    original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
  )


def _token_id(value: Any) -> int:
  if isinstance(value, list):  # e.g. Llama-3.1-Instruct lists several eos ids; keep the first
    value = value[0] if value else None
  return -1 if value is None else int(value)


def config_from_hf(
  hf: dict[str, Any], *, dtype: Any = "float32", param_dtype: Any = None
) -> ModelConfig:
  """`ModelConfig` from an HF `config.json` dict (model_type "llama" or "qwen3")."""
  family = hf.get("model_type")
  if family not in _ARCHITECTURES:
    raise ValueError(
      f"config.json: model_type {family!r} is not supported; expected one of {list(_ARCHITECTURES)}."
    )
  for key, ok in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False),
                  ("use_sliding_window", False)):  # fmt: skip
    if hf.get(key, ok) != ok:
      raise ValueError(f"config.json: {key}={hf[key]!r} is not supported (expected {ok!r}).")
  heads = hf["num_attention_heads"]
  theta, scaling = _rope(hf)
  return ModelConfig(
    vocab_size=hf["vocab_size"],
    num_layers=hf["num_hidden_layers"],
    embed_dim=hf["hidden_size"],
    num_heads=heads,
    num_kv_heads=hf.get("num_key_value_heads") or heads,
    head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
    mlp_dim=hf["intermediate_size"],
    family=family,
    rope_theta=theta,
    rope_scaling=scaling,
    norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
    # LlamaConfig and Qwen3Config both default to untied embeddings.
    tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    max_position_embeddings=hf.get("max_position_embeddings", 8192),
    dtype=dtype,
    param_dtype=dtype if param_dtype is None else param_dtype,
    bos_token_id=_token_id(hf.get("bos_token_id")),
    eos_token_id=_token_id(hf.get("eos_token_id")),
    pad_token_id=_token_id(hf.get("pad_token_id")),
  )


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
  """An HF `config.json` dict for `cfg` (legacy `rope_theta`/`rope_scaling` keys, read by v4 and v5)."""
  sc = cfg.rope_scaling
  out = {
    "architectures": [_ARCHITECTURES[cfg.family]],
    "model_type": cfg.family,
    "vocab_size": cfg.vocab_size,
    "hidden_size": cfg.embed_dim,
    "intermediate_size": cfg.mlp_dim,
    "num_hidden_layers": cfg.num_layers,
    "num_attention_heads": cfg.num_heads,
    "num_key_value_heads": cfg.num_kv_heads,
    "head_dim": cfg.head_dim,
    "hidden_act": "silu",
    "max_position_embeddings": cfg.max_position_embeddings,
    "rms_norm_eps": cfg.norm_eps,
    "rope_theta": cfg.rope_theta,
    "rope_scaling": None if sc is None else {"rope_type": "llama3", **dataclasses.asdict(sc)},
    "tie_word_embeddings": cfg.tie_embeddings,
    "attention_bias": False,
    "torch_dtype": cfg.param_dtype,
    "bos_token_id": None if cfg.bos_token_id < 0 else cfg.bos_token_id,
    "eos_token_id": None if cfg.eos_token_id < 0 else cfg.eos_token_id,
    "pad_token_id": None if cfg.pad_token_id < 0 else cfg.pad_token_id,
  }
  out.update({"mlp_bias": False} if cfg.family == "llama" else {"use_sliding_window": False})
  return out


# ---------------------------------------------------------------------------------------------
# Parameter placement, shared with the GGUF loader.


def abstract_decoder(cfg: ModelConfig) -> Decoder:
  """A `Decoder` whose parameters are shape/dtype placeholders (nothing allocated)."""
  with abstract_params():
    return Decoder(cfg, rngs=nnx.Rngs(0))


def get_param(model: Decoder, path: Path) -> nnx.Param:
  node = model
  for key in path:
    node = node[key] if isinstance(key, int) else getattr(node, key)
  return node


def assign(model: Decoder, path: Path, array: np.ndarray, *, source: str) -> None:
  """Places one host array as the parameter at `path` (cast to its dtype), checking the shape."""
  param = get_param(model, path)
  if tuple(array.shape) != tuple(param.shape):
    raise ValueError(
      f"{source}: converted shape {tuple(array.shape)} does not match parameter "
      f"{'/'.join(map(str, path))} of shape {tuple(param.shape)}."
    )
  param.set_value(jax.device_put(np.ascontiguousarray(array.astype(param.dtype))))


def check_complete(model: Decoder, source: str) -> None:
  missing = [
    "/".join(map(str, path))
    for path, leaf in nnx.to_flat_state(nnx.state(model, nnx.Param))
    if isinstance(leaf.get_value(), jax.ShapeDtypeStruct)
  ]
  if missing:
    raise ValueError(f"{source}: no weights were loaded for parameters {missing[:5]}.")


# ---------------------------------------------------------------------------------------------
# Directories.


def _tensor_files(path: str) -> dict[str, SafetensorsFile]:
  """Maps each tensor name to the (shard) file holding it."""
  index = os.path.join(path, "model.safetensors.index.json")
  single = os.path.join(path, "model.safetensors")
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    shards = {name: SafetensorsFile(os.path.join(path, name)) for name in set(weight_map.values())}
    files = {name: shards[shard] for name, shard in weight_map.items()}
    for name, file in files.items():
      if name not in file._header:
        raise ValueError(f"{index} maps tensor {name!r} to {file.path}, which does not contain it.")
    return files
  if os.path.exists(single):
    file = SafetensorsFile(single)
    return {name: file for name in file.names()}
  raise FileNotFoundError(
    f"{path}: neither model.safetensors nor model.safetensors.index.json found."
  )


def from_hf_dir(
  path: str | os.PathLike, *, dtype: Any = "float32", param_dtype: Any = None
) -> tuple[ModelConfig, Decoder]:
  """Loads an HF Llama/Qwen3 checkpoint directory (config.json + safetensors, sharded or not).

  Args:
    path: the directory.
    dtype: activation dtype ("float32" or "bfloat16").
    param_dtype: weight dtype; defaults to `dtype`.

  Returns:
    (cfg, model). Raises ValueError naming the tensor when the checkpoint lacks a tensor, has one of
    the wrong shape, or has tensors the config does not explain.
  """
  path = os.fspath(path)
  with open(os.path.join(path, "config.json")) as f:
    cfg = config_from_hf(json.load(f), dtype=dtype, param_dtype=param_dtype)
  files = _tensor_files(path)
  specs = hf_tensor_specs(cfg)
  expected = {s.name for s in specs}
  unexpected = [
      n for n in files
      if n not in expected and "rotary_emb" not in n and not (cfg.tie_embeddings and n == "lm_head.weight")
  ]  # fmt: skip
  if unexpected:
    raise ValueError(
      f"{path}: checkpoint tensors {unexpected[:5]} do not fit the config.json model."
    )
  model = abstract_decoder(cfg)
  for spec in specs:
    if spec.name not in files:
      raise ValueError(
        f"{path}: checkpoint lacks tensor {spec.name!r} (expected shape {spec.shape})."
      )
    w = files[spec.name].get(spec.name)
    if w.shape != spec.shape:
      raise ValueError(
        f"{path}: tensor {spec.name!r} has shape {w.shape}, config.json implies {spec.shape}."
      )
    assign(model, spec.path, spec.to_ours(w), source=f"tensor {spec.name!r}")
  check_complete(model, path)
  return cfg, model


def save_hf_dir(
  model: Decoder, cfg: ModelConfig, path: str | os.PathLike, *, dtype: Any = None
) -> None:
  """Writes `config.json` + `model.safetensors` that `transformers` loads (AutoModelForCausalLM).

  dtype: the stored weight dtype (default: the parameters' own dtype).
  """
  path = os.fspath(path)
  os.makedirs(path, exist_ok=True)
  out_dtype = np.dtype(jnp.dtype(dtype if dtype is not None else cfg.param_dtype))
  hf = config_to_hf(dataclasses.replace(cfg, param_dtype=jnp.dtype(out_dtype).name))
  entries = []
  for spec in hf_tensor_specs(cfg):
    param = get_param(model, spec.path)
    produce = lambda p=param, s=spec: s.to_theirs(np.asarray(jax.device_get(p[...])))  # noqa: E731
    entries.append((spec.name, spec.shape, out_dtype, produce))
  save_file(entries, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf, f, indent=2)
