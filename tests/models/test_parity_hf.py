"""Parity with Hugging Face transformers on tiny random Llama / Qwen3 models (CPU torch, no download).

torch and transformers are imported inside the tests, so `-m "not parity"` runs without them.
"""

import numpy as np
import pytest
from model_testutil import HF_VOCAB as VOCAB
from model_testutil import hf_logits, hf_tiny_model, left_padded_batch

from postrain import models
from postrain.models._greedy import greedy_generate

pytestmark = pytest.mark.parity

KINDS = ("llama", "llama3-scaled", "qwen3")


@pytest.fixture(scope="module", params=KINDS)
def pair(request, tmp_path_factory):
  kind = request.param
  hf_model = hf_tiny_model(kind, seed=KINDS.index(kind))
  path = tmp_path_factory.mktemp(kind)
  # sharded save: several files and model.safetensors.index.json
  hf_model.save_pretrained(path, max_shard_size="40KB")
  assert (path / "model.safetensors.index.json").exists()
  cfg, model = models.from_hf_dir(path)
  return kind, hf_model, cfg, model


def test_config_read_from_hf(pair):
  kind, _, cfg, _ = pair
  assert cfg.family == ("qwen3" if kind == "qwen3" else "llama")
  assert cfg.tie_embeddings == (kind == "qwen3")
  assert (cfg.rope_scaling is not None) == (kind == "llama3-scaled")


@pytest.mark.parametrize("seed", [0, 1])
def test_logits_match_transformers_with_left_padding(pair, seed, jit_forward):
  _, hf_model, _cfg, model = pair
  tokens, valid, positions = left_padded_batch(seed, 4, 40, VOCAB, (0, 5, 17, 33))
  want = hf_logits(hf_model, tokens, valid, positions)
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
  want = hf_logits(hf_model, tokens, valid, positions)
  np.testing.assert_allclose(
    hf_logits(reloaded, tokens, valid, positions)[valid], want[valid], atol=1e-5
  )
