"""LoRA export parity with Hugging Face (CPU torch, no download): merged full weights through
`models.save_hf_dir` load in transformers, and the PEFT adapter directory (`models.save_peft_dir`)
loads with `peft` onto the transformers base, both with our adapted model's logits."""

import jax
import numpy as np
import pytest
from model_testutil import HF_VOCAB as VOCAB
from model_testutil import hf_logits, hf_tiny_model, left_padded_batch

from postrain import models

pytestmark = pytest.mark.parity


def _ours(model, tokens, valid, positions):
  hidden, _ = model(tokens, positions, valid=valid)
  return np.asarray(model.logits(hidden))


@pytest.mark.parametrize(
  "kind,targets",
  [
    ("llama", models.LORA_TARGETS),
    ("qwen3", models.LORA_TARGETS),
    ("llama", (r"layers/0/attn/(q|o)$", r"layers/1/mlp/down$")),  # PEFT's regex target_modules
  ],
)
def test_merged_and_peft_exports_match_transformers(kind, targets, tmp_path):
  import peft
  import torch
  import transformers

  hf_base = hf_tiny_model(kind, seed=0)
  hf_base.save_pretrained(tmp_path / "base")
  cfg, model = models.from_hf_dir(tmp_path / "base")
  models.add_lora(model, rank=4, alpha=8.0, targets=targets, seed=1)
  key = jax.random.key(2)
  for i, adapter in enumerate(models.lora_adapters(model).values()):
    b = adapter.lora_b
    b.set_value(0.2 * jax.random.normal(jax.random.fold_in(key, i), b.shape, b.dtype))
  tokens, valid, positions = left_padded_batch(5, 3, 24, VOCAB, (0, 4, 11))
  ours = _ours(model, tokens, valid, positions)
  base = hf_logits(hf_base, tokens, valid, positions)
  assert np.abs(ours - base)[valid].max() > 1e-2  # the adapters matter

  # Merged full weights: a plain checkpoint transformers loads.
  models.save_hf_dir(models.merge_lora(model), cfg, tmp_path / "merged")
  merged = transformers.AutoModelForCausalLM.from_pretrained(
    tmp_path / "merged", dtype=torch.float32
  ).eval()
  got = hf_logits(merged, tokens, valid, positions)
  np.testing.assert_allclose(got[valid], ours[valid], atol=1e-4, rtol=0)

  # PEFT adapter directory onto the (unmerged) transformers base.
  models.save_peft_dir(model, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))
  assert (tmp_path / "adapter" / "adapter_config.json").exists()
  peft_model = peft.PeftModel.from_pretrained(
    hf_tiny_model(kind, seed=0), tmp_path / "adapter"
  ).eval()
  n_adapted = sum(1 for n, _ in peft_model.named_modules() if n.endswith("lora_A"))
  assert n_adapted == len(models.lora_adapters(model))
  got = hf_logits(peft_model, tokens, valid, positions)
  np.testing.assert_allclose(got[valid], ours[valid], atol=1e-4, rtol=0)
