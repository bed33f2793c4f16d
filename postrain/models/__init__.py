"""Flax NNX decoder for the Llama (incl. SmolLM2) and Qwen3 families, weight import and tokenizers.

from postrain import models
cfg = models.get_config("tiny")
model = models.Decoder(cfg, rngs=nnx.Rngs(0))
logits = models.forward(model, tokens, valid=valid)       # f32[B, T, V], one call
hidden, cache = model(tokens, positions, valid=valid, cache=None)
logp = models.logprobs(model, tokens, mask)
"""

from postrain.models import tokenizers
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

__all__ = [
  "REMAT_POLICIES",
  "Decoder",
  "KVCache",
  "ModelConfig",
  "RopeScaling",
  "blocked_head",
  "blocked_logits",
  "config_from_hf",
  "config_names",
  "config_to_hf",
  "forward",
  "from_gguf",
  "from_hf_dir",
  "get_config",
  "init_cache",
  "logprobs",
  "positions_from_valid",
  "save_hf_dir",
  "smollm2_gguf_path",
  "token_logprobs_from_hidden",
  "tokenizers",
]
