"""LoRA export parity with Hugging Face (CPU torch, no download): merged full weights through
`models.save_hf_dir` load in transformers, and the PEFT adapter directory (`models.save_peft_dir`)
loads with `peft` onto the transformers base, both with our adapted model's logits."""

import jax
import numpy as np
import pytest
from model_testutil import left_padded_batch

from postrain import models

pytestmark = pytest.mark.parity

VOCAB = 256


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
    cfg = transformers.LlamaConfig(**common, tie_word_embeddings=False, rope_parameters=rope)
    cls = transformers.LlamaForCausalLM
  torch.manual_seed(seed)
  model = cls(cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
  return model


def _hf_logits(hf_model, tokens, valid, positions):
  import torch

  with torch.no_grad():
    out = hf_model(input_ids=torch.tensor(tokens, dtype=torch.long),
                   attention_mask=torch.tensor(valid, dtype=torch.long),
                   position_ids=torch.tensor(positions, dtype=torch.long))  # fmt: skip
  return out.logits.float().numpy()


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

  hf_base = _hf_model(kind, seed=0)
  hf_base.save_pretrained(tmp_path / "base")
  cfg, model = models.from_hf_dir(tmp_path / "base")
  models.add_lora(model, rank=4, alpha=8.0, targets=targets, seed=1)
  key = jax.random.key(2)
  for i, adapter in enumerate(models.lora_adapters(model).values()):
    b = adapter.lora_b
    b.set_value(0.2 * jax.random.normal(jax.random.fold_in(key, i), b.shape, b.dtype))
  tokens, valid, positions = left_padded_batch(5, 3, 24, VOCAB, (0, 4, 11))
  ours = _ours(model, tokens, valid, positions)
  base = _hf_logits(hf_base, tokens, valid, positions)
  assert np.abs(ours - base)[valid].max() > 1e-2  # the adapters matter

  # Merged full weights: a plain checkpoint transformers loads.
  models.save_hf_dir(models.merge_lora(model), cfg, tmp_path / "merged")
  merged = transformers.AutoModelForCausalLM.from_pretrained(
    tmp_path / "merged", dtype=torch.float32
  ).eval()
  got = _hf_logits(merged, tokens, valid, positions)
  np.testing.assert_allclose(got[valid], ours[valid], atol=1e-4, rtol=0)

  # PEFT adapter directory onto the (unmerged) transformers base.
  models.save_peft_dir(model, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))
  assert (tmp_path / "adapter" / "adapter_config.json").exists()
  peft_model = peft.PeftModel.from_pretrained(_hf_model(kind, seed=0), tmp_path / "adapter").eval()
  n_adapted = sum(1 for n, _ in peft_model.named_modules() if n.endswith("lora_A"))
  assert n_adapted == len(models.lora_adapters(model))
  got = _hf_logits(peft_model, tokens, valid, positions)
  np.testing.assert_allclose(got[valid], ours[valid], atol=1e-4, rtol=0)
