"""Parity with Hugging Face transformers on tiny random Llama / Qwen3 models (CPU torch, no download).

torch and transformers are imported inside the tests, so `-m "not parity"` runs without them.
"""

import numpy as np
import pytest
from model_testutil import left_padded_batch

from postrain import models
from postrain.models._greedy import greedy_generate

pytestmark = pytest.mark.parity

VOCAB = 256
KINDS = ("llama", "llama3-scaled", "qwen3")


def _hf_model(kind, seed):
  import torch
  import transformers

  common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                rms_norm_eps=1e-6)  # fmt: skip
  if kind == "qwen3":
    cfg = transformers.Qwen3Config(**common, tie_word_embeddings=True, rope_theta=1e6)
    cls = transformers.Qwen3ForCausalLM
  else:
    rope = {"rope_type": "default", "rope_theta": 1e4}
    if kind == "llama3-scaled":  # short original context so all three frequency bands occur
      rope = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 32}  # fmt: skip
    cfg = transformers.LlamaConfig(**common, tie_word_embeddings=False, rope_parameters=rope)
    cls = transformers.LlamaForCausalLM
  torch.manual_seed(seed)
  model = cls(cfg).eval()
  with torch.no_grad():  # larger than the 0.02 init so attention and norms really matter
    for name, p in model.named_parameters():
      p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
  model.generation_config.eos_token_id = None
  model.generation_config.pad_token_id = 0
  return model


@pytest.fixture(scope="module", params=KINDS)
def pair(request, tmp_path_factory):
  kind = request.param
  hf_model = _hf_model(kind, seed=KINDS.index(kind))
  path = tmp_path_factory.mktemp(kind)
  # sharded save: several files and model.safetensors.index.json
  hf_model.save_pretrained(path, max_shard_size="40KB")
  assert (path / "model.safetensors.index.json").exists()
  cfg, model = models.from_hf_dir(path)
  return kind, hf_model, cfg, model


def _hf_logits(hf_model, tokens, valid, positions):
  import torch

  with torch.no_grad():
    out = hf_model(input_ids=torch.tensor(tokens, dtype=torch.long),
                   attention_mask=torch.tensor(valid, dtype=torch.long),
                   position_ids=torch.tensor(positions, dtype=torch.long))  # fmt: skip
  return out.logits.float().numpy()


def test_config_read_from_hf(pair):
  kind, _, cfg, _ = pair
  assert cfg.family == ("qwen3" if kind == "qwen3" else "llama")
  assert cfg.tie_embeddings == (kind == "qwen3")
  assert (cfg.rope_scaling is not None) == (kind == "llama3-scaled")


@pytest.mark.parametrize("seed", [0, 1])
def test_logits_match_transformers_with_left_padding(pair, seed, jit_forward):
  _, hf_model, _cfg, model = pair
  tokens, valid, positions = left_padded_batch(seed, 4, 40, VOCAB, (0, 5, 17, 33))
  want = _hf_logits(hf_model, tokens, valid, positions)
  got = np.asarray(jit_forward(model, tokens, positions, valid))
  np.testing.assert_allclose(got[valid], want[valid], atol=1e-4, rtol=0)


def test_greedy_generation_matches_transformers_generate(pair):
  import torch

  _, hf_model, _cfg, model = pair
  rng = np.random.default_rng(3)
  prompts = [rng.integers(1, VOCAB, n).tolist() for n in (5, 9, 2)]
  ours = greedy_generate(model, prompts, max_new_tokens=32)
  width = max(map(len, prompts))
  ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
  mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
  with torch.no_grad():
    out = hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=32, do_sample=False)
  theirs = out[:, width:].tolist()
  assert ours == theirs


def test_export_roundtrip_loads_in_transformers(pair, tmp_path):
  import torch
  import transformers

  _, hf_model, cfg, model = pair
  models.save_hf_dir(model, cfg, tmp_path)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
  assert type(reloaded) is type(hf_model)
  tokens, valid, positions = left_padded_batch(7, 2, 24, VOCAB, (0, 9))
  want = _hf_logits(hf_model, tokens, valid, positions)
  np.testing.assert_allclose(
    _hf_logits(reloaded, tokens, valid, positions)[valid], want[valid], atol=1e-5
  )
