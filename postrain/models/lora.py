"""LoRA and QLoRA on the decoder: low-rank adapters (flax `nnx.LoRA`) on the projection weights,
over a frozen base that may be quantised to int8 or NF4 (qwix `quantize` / `dequantize`).

    model = models.Decoder(cfg, rngs=nnx.Rngs(0))          # or models.from_hf_dir(...)
    models.add_lora(model, rank=16, alpha=32)               # B = 0: the base's logits exactly
    models.quantize_base(model, "nf4")                      # QLoRA: frozen base in NF4
    graphdef, lora, base, rest = nnx.split(model, nnx.LoRAParam, nnx.Param, ...)
    with models.lora_disabled():                            # inside a traced function: the base
      ref = models.forward(model, tokens)
    with models.lora_dropout(0.05, key):                    # inside the traced training loss
      logp = models.logprobs(model, tokens, mask)           # adapters' input dropped out
    plain = models.merge_lora(model)                        # a plain Decoder, W + scale * A @ B
    models.save_peft_dir(model, "adapter/")                 # PEFT's adapter_config + safetensors

An adapted weight W (layout [in..., out...], e.g. `attn.q` [D, N, H]) gets `{name}_lora`, an
`nnx.LoRA(in, rank, out)` beside it: A [in, r] (`nnx.LoRAParam`, flax's variance-scaling init),
B [r, out] (`nnx.LoRAParam`, zeros), and the projection becomes y = x W + (alpha / r) x A B
(`_layers.adapt`), with in / out the flattened input / output axes (PEFT's lora_A / lora_B
transposed). Adapter parameters are float32 whatever the base's dtype; their filter is
`nnx.LoRAParam` (a subclass of `nnx.Param`: split with `nnx.LoRAParam` before `nnx.Param`).

Library choice: flax's `nnx.LoRA` (the adapter module and its `LoRAParam` type) plus qwix's
`quantize` / `dequantize` for the frozen base. qwix's `LoraProvider` was tried and not used: its
rules select modules, not weights, and our projections are einsums on raw parameters (it missed
`attn.o`, which is reshaped before its matmul, and failed under `jax.jit`); it has no merge, no
adapters-off switch and no PEFT export.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from postrain.models._decoder import Decoder
from postrain.models._layers import (  # noqa: F401
  _LORA_DROPOUT,
  _LORA_OFF,
  LORA_SITES,
  abstract_params,
  dropout_input,
  lora_dropout_key,
  weight,
)
from postrain.models._safetensors import save_file

# Parameter-path regexes (`re.search` over "layers/0/attn/q"-style paths) of the default targets:
# attention q/k/v/o and the MLP gate/up/down projections.
DEFAULT_TARGETS: tuple[str, ...] = (r"attn/(q|k|v|o)$", r"mlp/(gate|up|down)$")
QUANTIZE_MODES = ("none", "int8", "nf4")
# NF4 block size along the input axis (QLoRA, arXiv:2305.14314: blocks of 64).
NF4_BLOCK = 64
# The projection weights that can take an adapter: (module, name, number of leading input axes).
_PROJECTIONS = (
  ("attn", "q", 1),
  ("attn", "k", 1),
  ("attn", "v", 1),
  ("attn", "o", 2),
  ("mlp", "gate", 1),
  ("mlp", "up", 1),
  ("mlp", "down", 1),
)
# Our module / weight names -> the HF module names (PEFT's keys).
_HF_MODULE = {"attn": "self_attn", "mlp": "mlp"}
_HF_NAME = {n: f"{n}_proj" for n in ("q", "k", "v", "o", "gate", "up", "down")}

LORA = nnx.LoRAParam
BASE = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))


def _projections(model: Decoder):
  """(path string, module, name, input axes) of every projection weight, in layer order."""
  for i, block in enumerate(model.layers):
    for mod_name, name, n_in in _PROJECTIONS:
      yield f"layers/{i}/{mod_name}/{name}", getattr(block, mod_name), name, n_in


def _all_param_paths(model: Decoder) -> list[str]:
  return ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]


def resolve_targets(
  model: Decoder, targets: Sequence[str], *, key: str = "config.model.lora.targets"
) -> list[str]:
  """The projection paths ("layers/{i}/attn/q", ...) matched by any regex of `targets`
  (`re.search`). ValueError naming `key` for a regex that matches no projection weight."""
  if isinstance(targets, str):
    targets = (targets,)
  paths = [p for p, *_ in _projections(model)]
  chosen: list[str] = []
  for pattern in targets:
    try:
      rx = re.compile(pattern)
    except re.error as err:
      raise ValueError(f"{key}: {pattern!r} is not a regular expression ({err}).") from None
    hits = [p for p in paths if rx.search(p)]
    if not hits:
      others = [p for p in _all_param_paths(model) if rx.search(p)]
      why = (
        f"it matches only {others[:3]}, which cannot take an adapter"
        if others
        else "it matches no parameter"
      )
      raise ValueError(
        f"{key}: regex {pattern!r} matches no projection weight ({why}); adapter targets are "
        f"paths such as {paths[:4] + paths[4:7]}."
      )
    chosen += [p for p in hits if p not in chosen]
  return [p for p in paths if p in chosen]


def _dims(w_shape: tuple[int, ...], n_in: int) -> tuple[int, int]:
  return int(np.prod(w_shape[:n_in])), int(np.prod(w_shape[n_in:]))


def add_lora(
  model: Decoder,
  *,
  rank: int,
  alpha: float | None = None,
  targets: Sequence[str] = DEFAULT_TARGETS,
  seed: int = 0,
) -> Decoder:
  """Adds LoRA adapters (in place; returns `model`) to the projection weights whose paths match
  `targets`: A [in, rank] random, B [rank, out] zero (the model's outputs are unchanged), float32,
  scale `alpha / rank` (alpha defaults to rank).

  ValueError, naming the config key, for rank < 1, a rank larger than a target's input or output
  dimension, a target regex matching no projection, or a model that already has adapters.
  """
  if not isinstance(rank, int | np.integer) or rank < 1:
    raise ValueError(f"config.model.lora.rank: must be a positive integer, got {rank!r}.")
  if has_lora(model):
    raise ValueError("add_lora: the model already has LoRA adapters.")
  alpha = float(rank if alpha is None else alpha)
  if not alpha > 0:
    raise ValueError(f"config.model.lora.alpha: must be positive, got {alpha}.")
  chosen = set(resolve_targets(model, targets))
  found = [
    (path, module, name, n_in) for path, module, name, n_in in _projections(model) if path in chosen
  ]
  for path, module, name, n_in in found:
    d_in, d_out = _dims(tuple(getattr(module, name).shape), n_in)
    if rank > min(d_in, d_out):
      raise ValueError(
        f"config.model.lora.rank: {rank} is larger than target {path}'s dimensions (input "
        f"{d_in}, output {d_out}); use a rank <= {min(d_in, d_out)} or drop it from "
        "config.model.lora.targets."
      )
  rngs = nnx.Rngs(params=seed)
  dtype = model.cfg.jnp_dtype
  for _, module, name, n_in in found:
    d_in, d_out = _dims(tuple(getattr(module, name).shape), n_in)
    adapter = nnx.LoRA(d_in, rank, d_out, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    adapter.scale = alpha / rank
    adapter.alpha = alpha
    setattr(module, f"{name}_lora", adapter)
  return model


def lora_adapters(model: Decoder) -> dict[str, nnx.LoRA]:
  """{projection path: its `nnx.LoRA`} of the adapted weights."""
  out = {}
  for path, module, name, _ in _projections(model):
    adapter = getattr(module, f"{name}_lora", None)
    if adapter is not None:
      out[path] = adapter
  return out


def has_lora(model: Decoder) -> bool:
  return bool(lora_adapters(model))


def lora_rank_alpha(model: Decoder) -> tuple[int, float]:
  """(rank, alpha) of the model's adapters (ValueError without adapters)."""
  adapters = lora_adapters(model)
  if not adapters:
    raise ValueError("the model has no LoRA adapters (models.add_lora).")
  first = next(iter(adapters.values()))
  return int(first.lora_a.shape[1]), float(first.alpha)


def lora_disabled():
  """Context manager: while a forward pass is traced inside it, the adapters are skipped (the
  frozen base's outputs, e.g. the KL reference). The switch is read when a function is traced:
  enter it inside the jitted function (jit's cache does not know about it, so one jitted function
  must not be traced both inside and outside it).
  """
  import contextlib

  @contextlib.contextmanager
  def ctx():
    token = _LORA_OFF.set(True)
    try:
      yield
    finally:
      _LORA_OFF.reset(token)

  return ctx()


def lora_dropout(rate: float, key: jax.Array):
  """Context manager: while a forward pass is traced inside it, every adapter's input is dropped
  out (training only; the trainer enters it in the update's loss, never for old / reference
  log-probs, sampling or evaluation):

      y = x W + (alpha / r) · dropout(x) A B,   dropout(x) = x · m / (1 - rate),  m ~ Bernoulli(1 - rate)

  the semantics of PEFT's `lora_dropout` (`lora_B(lora_A(dropout(x))) * scaling`, an
  `nn.Dropout` on the adapter branch only) and of qwix's `LoraProvider(dropout=)` (an
  `nnx.Dropout` on the adapter's input): the base path W x sees the undropped x, and each adapted
  projection draws its own mask. The mask of adapter `name` in block `i` is drawn with
  `lora_dropout_key(key, i, name)` = fold_in(fold_in(key, i), `LORA_SITES.index(name)`), so it is
  a function of `key` alone (the same on any mesh, with or without remat). rate 0: no-op.
  """
  import contextlib

  if not 0.0 <= float(rate) < 1.0:
    raise ValueError(f"config.model.lora.dropout: must be in [0, 1), got {rate}.")

  @contextlib.contextmanager
  def ctx():
    if float(rate) == 0.0:
      yield
      return
    token = _LORA_DROPOUT.set((float(rate), key))
    try:
      yield
    finally:
      _LORA_DROPOUT.reset(token)

  return ctx()


def is_quantized(model: Decoder) -> bool:
  return any(hasattr(getattr(m, n).get_value(), "qvalue") for _, m, n, _ in _projections(model))


def quantize_weight(w: jax.Array, mode: str, n_in: int) -> Any:
  """One projection weight [in..., out...] -> a qwix `QArray`.

  int8: symmetric absmax per output channel (each output column over all its inputs); nf4
  (QLoRA): NF4 codes with one absmax scale per block of `NF4_BLOCK` consecutive inputs (the last
  input axis; the whole axis when 64 does not divide it) per output channel. The scales keep the
  weight's dtype (the dequantised weight's dtype).
  """
  import qwix

  out_axes = tuple(range(n_in, w.ndim))
  if mode == "int8":
    return qwix.quantize(w, jnp.int8, channelwise_axes=out_axes)
  if mode == "nf4":
    last = n_in - 1
    tiled = {last: NF4_BLOCK} if w.shape[last] % NF4_BLOCK == 0 else {}
    return qwix.quantize(w, "nf4", channelwise_axes=tuple(range(last)) + out_axes, tiled_axes=tiled)
  raise ValueError(f"config.model.quantize: must be one of {QUANTIZE_MODES}, got {mode!r}.")


def quantize_base(model: Decoder, mode: str, *, embed_dtype: Any = jnp.bfloat16) -> Decoder:
  """Quantises every projection weight of the base (in place; returns `model`) to `mode` ("int8"
  or "nf4"; "none" leaves it); the forward pass dequantises each weight to the activation dtype
  (`_layers.weight`).

  The token embedding and the untied LM head are stored in `embed_dtype` (bfloat16; None keeps
  them): with LoRA they are frozen whether tied or not (adapters only attach to the projections,
  `resolve_targets`), and QLoRA (arXiv:2305.14314) keeps its non-quantised weights in the 16-bit
  compute dtype too. Norms and the adapters stay as they are."""
  if mode not in QUANTIZE_MODES:
    raise ValueError(f"config.model.quantize: must be one of {QUANTIZE_MODES}, got {mode!r}.")
  if mode == "none":
    return model
  if is_quantized(model):
    raise ValueError("quantize_base: the base is already quantised.")
  for _, module, name, n_in in _projections(model):
    param = getattr(module, name)
    param.set_value(quantize_weight(param.get_value(), mode, n_in))
  if embed_dtype is not None:
    for param in (model.embedding, model.lm_head):
      if param is not None and jnp.dtype(param.get_value().dtype).itemsize > 2:
        param.set_value(param.get_value().astype(embed_dtype))
  return model


def merged_weight(module: nnx.Module, name: str, dtype: jnp.dtype) -> jax.Array:
  """W (dequantised) + scale * A @ B reshaped to W's shape, computed in float32, cast to dtype."""
  param = getattr(module, name)
  w = weight(param, jnp.float32)
  adapter = getattr(module, f"{name}_lora", None)
  if adapter is not None:
    ab = adapter.lora_a[...].astype(jnp.float32) @ adapter.lora_b[...].astype(jnp.float32)
    w = w + adapter.scale * ab.reshape(w.shape)
  return w.astype(dtype)


def merge_lora(model: Decoder) -> Decoder:
  """A plain `Decoder` (no adapters, no quantisation, the config's `param_dtype`) whose projection
  weights are W + (alpha / r) A B; every other parameter is shared with `model`. Traceable: call
  it inside `jax.jit` to build the sampling copy of a step."""
  cfg = model.cfg
  with abstract_params():
    out = Decoder(cfg, rngs=nnx.Rngs(0))
  pdt = cfg.jnp_param_dtype
  adapted = {(id(m), n) for _, m, n, _ in _projections(model)}
  src = dict(nnx.to_flat_state(nnx.state(model, BASE)))
  for path, _ in nnx.to_flat_state(nnx.state(out, nnx.Param)):
    node, target = model, out
    for k in path[:-1]:
      node = node[k] if isinstance(k, int) else getattr(node, k)
      target = target[k] if isinstance(k, int) else getattr(target, k)
    if (id(node), path[-1]) in adapted:
      value = merged_weight(node, path[-1], pdt)
    else:
      value = src[path].get_value()
    getattr(target, path[-1]).set_value(value)
  return out


def base_sha256(model: Decoder) -> str:
  """SHA-256 of the base weights (every non-adapter parameter: path, dtype, shape and bytes, in
  path order; a quantised weight's codes and scales): identifies the base a LoRA run trained on."""
  import hashlib

  h = hashlib.sha256()
  for path, var in nnx.to_flat_state(nnx.state(model, BASE)):
    for leaf in jax.tree.leaves(var.get_value()):
      x = np.asarray(jax.device_get(leaf))
      h.update(f"{'/'.join(map(str, path))}:{x.dtype}:{x.shape};".encode())
      h.update(np.ascontiguousarray(x).tobytes())
  return h.hexdigest()


def lora_state(model: Decoder) -> nnx.State:
  """The adapter parameters (`nnx.LoRAParam`) as a state."""
  return nnx.state(model, LORA)


# -- PEFT export ------------------------------------------------------------------------------


def _hf_module_name(path: str) -> str:
  _, i, mod, name = path.split("/")
  return f"model.layers.{i}.{_HF_MODULE[mod]}.{_HF_NAME[name]}"


def save_peft_dir(
  model: Decoder,
  path: str | os.PathLike,
  *,
  base_model_name_or_path: str | None = None,
) -> None:
  """Writes a PEFT LoRA adapter directory: `adapter_config.json` and `adapter_model.safetensors`
  (lora_A [r, in], lora_B [out, r] per adapted HF module, float32) that `peft.PeftModel
  .from_pretrained(transformers_base, path)` loads onto the model `models.save_hf_dir` writes."""
  adapters = lora_adapters(model)
  if not adapters:
    raise ValueError("save_peft_dir: the model has no LoRA adapters (models.add_lora).")
  rank, alpha = lora_rank_alpha(model)
  path = os.fspath(path)
  os.makedirs(path, exist_ok=True)
  hf_names = {p: _hf_module_name(p) for p in adapters}
  entries = []
  for p, adapter in adapters.items():
    a = np.asarray(jax.device_get(adapter.lora_a[...]), np.float32)
    b = np.asarray(jax.device_get(adapter.lora_b[...]), np.float32)
    pre = f"base_model.model.{hf_names[p]}"
    entries.append((pre + ".lora_A.weight", (rank, a.shape[0]), np.dtype(np.float32),
                    lambda a=a: np.ascontiguousarray(a.T)))  # fmt: skip
    entries.append((pre + ".lora_B.weight", (b.shape[1], rank), np.dtype(np.float32),
                    lambda b=b: np.ascontiguousarray(b.T)))  # fmt: skip
  save_file(entries, os.path.join(path, "adapter_model.safetensors"), metadata={"format": "pt"})
  short = sorted({n.rsplit(".", 1)[1] for n in hf_names.values()})
  every_layer = len(adapters) == len(short) * model.cfg.num_layers
  target_modules: Any = (
    short
    if every_layer
    else "^(" + "|".join(re.escape(n) for n in sorted(hf_names.values())) + ")$"
  )
  config = {
    "peft_type": "LORA",
    "task_type": "CAUSAL_LM",
    "base_model_name_or_path": base_model_name_or_path,
    "r": rank,
    "lora_alpha": alpha,
    "lora_dropout": 0.0,
    "target_modules": target_modules,
    "bias": "none",
    "fan_in_fan_out": False,
    "use_rslora": False,
    "use_dora": False,
    "init_lora_weights": True,
    "modules_to_save": None,
    "inference_mode": True,
  }
  with open(os.path.join(path, "adapter_config.json"), "w") as f:
    json.dump(config, f, indent=2)
