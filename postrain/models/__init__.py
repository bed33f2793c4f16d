"""Flax NNX decoder for the Llama (incl. SmolLM2) and Qwen3 families, weight import and tokenizers.

from postrain import models
cfg = models.get_config("tiny")
model = models.Decoder(cfg, rngs=nnx.Rngs(0))
logits = models.forward(model, tokens, valid=valid)       # f32[B, T, V], one call
hidden, cache = model(tokens, positions, valid=valid, cache=None)
logp = models.logprobs(model, tokens, mask)
"""

from postrain.models import lora, tokenizers
from postrain.models._cache import KVCache, init_cache
from postrain.models._config import (
  REMAT_POLICIES,
  ModelConfig,
  RopeScaling,
  config_names,
  get_config,
)
from postrain.models._decoder import Decoder
from postrain.models._forward import forward
from postrain.models._gguf import from_gguf, smollm2_gguf_path
from postrain.models._head import blocked_head, blocked_logits
from postrain.models._hf import config_from_hf, config_to_hf, from_hf_dir, save_hf_dir
from postrain.models._logprobs import logprobs, positions_from_valid, token_logprobs_from_hidden
from postrain.models.lora import (
  DEFAULT_TARGETS as LORA_TARGETS,
)
from postrain.models.lora import (
  QUANTIZE_MODES,
  add_lora,
  base_sha256,
  has_lora,
  is_quantized,
  lora_adapters,
  lora_disabled,
  lora_dropout,
  lora_rank_alpha,
  lora_state,
  merge_lora,
  quantize_base,
  resolve_targets,
  save_peft_dir,
)

__all__ = [
  "LORA_TARGETS",
  "QUANTIZE_MODES",
  "REMAT_POLICIES",
  "Decoder",
  "KVCache",
  "ModelConfig",
  "RopeScaling",
  "add_lora",
  "base_sha256",
  "blocked_head",
  "blocked_logits",
  "config_from_hf",
  "config_names",
  "config_to_hf",
  "forward",
  "from_gguf",
  "from_hf_dir",
  "get_config",
  "has_lora",
  "init_cache",
  "is_quantized",
  "logprobs",
  "lora",
  "lora_adapters",
  "lora_disabled",
  "lora_dropout",
  "lora_rank_alpha",
  "lora_state",
  "merge_lora",
  "positions_from_valid",
  "quantize_base",
  "resolve_targets",
  "save_hf_dir",
  "save_peft_dir",
  "smollm2_gguf_path",
  "token_logprobs_from_hidden",
  "tokenizers",
]
