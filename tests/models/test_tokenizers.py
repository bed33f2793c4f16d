"""Tokenizers (sentencepiece, HF tokenizer.json, GGUF metadata) and chat templates."""

import io
import json

import gguf
import pytest
import sentencepiece as spm
import tokenizers as hf
from tokenizers import decoders, pre_tokenizers, trainers

from postrain.models import tokenizers

CORPUS = [
    "the cat sat on the mat", "12 + 30 = 42", "what is 7 times 6?", "the answer is 42.",
    "hello world, hello tokenizers", "café naïve 東京", "I'm sure they'll say we're done",
] * 20  # fmt: skip
STRINGS = [
  "the cat is 42",
  "hello   world\n\nnew line",
  "café 1234567",
  "<|im_start|>user\nhi<|im_end|>",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _byte_level_bpe():
  tok = hf.Tokenizer(hf.models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence(
    [
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ]
  )
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
  )
  tok.train_from_iterator(CORPUS, trainer)
  return tok


@pytest.fixture(scope="module")
def bpe():
  return _byte_level_bpe()


def test_hf_tokenizer_from_json_with_tokenizer_config(tmp_path, bpe):
  bpe.save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({
      "bos_token": {"content": "<|im_start|>", "special": True}, "eos_token": "<|im_end|>",
      "pad_token": None}))  # fmt: skip
  tok = tokenizers.HFTokenizer(tmp_path / "tokenizer.json")
  assert isinstance(tok, tokenizers.Tokenizer)
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, -1)
  assert tok.vocab_size == bpe.get_vocab_size()
  for s in STRINGS:
    assert tok.decode(tok.encode(s)) == s
  ids = tok.encode("<|im_start|>user")
  assert ids[0] == 1 and len(ids) > 1  # the special token is matched whole
  assert (
    tokenizers.HFTokenizer(tmp_path, eos="<|endoftext|>").eos_id == 0
  )  # a directory, an override
  assert tokenizers.load_tokenizer(tmp_path / "tokenizer.json").encode("the cat") == tok.encode(
    "the cat"
  )
  with pytest.raises(ValueError, match="not in the vocabulary"):
    tokenizers.HFTokenizer(bpe, eos="<nope>")


def test_sentencepiece_tokenizer(tmp_path):
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=60, model_type="bpe",
      character_coverage=1.0,
  )  # fmt: skip
  path = tmp_path / "spm.model"
  path.write_bytes(model.getvalue())
  tok = tokenizers.load_tokenizer(path)
  assert isinstance(tok, tokenizers.SentencePieceTokenizer)
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (
    1,
    2,
    -1,
    60,
  )  # sentencepiece defaults
  for s in ["the cat sat on the mat", "what is 7 times 6?"]:
    ids = tok.encode(s)
    assert all(isinstance(i, int) for i in ids) and tok.decode(ids) == s
    assert 1 not in ids and 2 not in ids  # encode adds no BOS/EOS


def _write_tokenizer_gguf(path, bpe, pre):
  vocab = bpe.get_vocab()
  tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
  merges = [" ".join(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre(pre)
  writer.add_token_list(tokens)
  writer.add_token_merges(merges)
  writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
  writer.add_bos_token_id(vocab["<|im_start|>"])
  writer.add_eos_token_id(vocab["<|im_end|>"])
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


def test_gguf_tokenizer_matches_the_tokenizer_it_was_written_from(tmp_path, bpe):
  _write_tokenizer_gguf(tmp_path / "t.gguf", bpe, "smollm")
  tok = tokenizers.from_gguf(tmp_path / "t.gguf")
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, -1)
  for s in STRINGS:
    assert tok.encode(s) == bpe.encode(s).ids, s
    assert tok.decode(tok.encode(s)) == s
  _write_tokenizer_gguf(tmp_path / "u.gguf", bpe, "some-new-pre")
  with pytest.raises(ValueError, match="pre-tokenizer 'some-new-pre' is not supported"):
    tokenizers.from_gguf(tmp_path / "u.gguf")


def test_chat_templates():
  msgs = [{"role": "user", "content": "What is 2+3?"}]
  assert tokenizers.apply_chat_template(msgs, "chatml") == (
    "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
  )
  assert tokenizers.apply_chat_template(msgs, "smollm2") == (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
  )
  sys_msgs = [{"role": "system", "content": "Be brief."}, *msgs]
  assert tokenizers.apply_chat_template(sys_msgs, "smollm2", add_generation_prompt=False) == (
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
  )
  history = [*msgs, {"role": "assistant", "content": "<think>\nadd\n</think>\n\n5"},
             {"role": "user", "content": "And 2+4?"}]  # fmt: skip
  assert tokenizers.apply_chat_template(history, "qwen3", enable_thinking=False) == (
    "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n"
    "<|im_start|>user\nAnd 2+4?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
  )
  with pytest.raises(ValueError, match="`template_name` must be one of"):
    tokenizers.apply_chat_template(msgs, "jinja")
  with pytest.raises(ValueError, match=r"`messages\[0\]`"):
    tokenizers.apply_chat_template([{"content": "x"}], "chatml")
