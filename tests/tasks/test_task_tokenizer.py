"""Sentencepiece tokenizer trained on the task corpus: cached, digit-split, exact round trip."""

import os

import pytest
import sentencepiece as spm

from postrain import tasks


@pytest.fixture(scope="module")
def corpus():
  problems = tasks.get_task("chain_sum").generate("train", 30, seed=0)
  problems += tasks.get_task("basic_arithmetic").generate("train", 10, seed=0)
  return tasks.task_corpus(problems)


def test_train_cached_and_digits_split(tmp_path, corpus, monkeypatch):
  path = tasks.train_tokenizer(corpus, tmp_path, vocab_size=256)
  assert os.path.isfile(path) and path.endswith(".model")
  sp = spm.SentencePieceProcessor(model_file=path)
  assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
  assert sp.get_piece_size() <= 256
  # Every piece holding a digit is exactly one digit (ignoring the whitespace marker).
  for i in range(sp.get_piece_size()):
    piece = sp.id_to_piece(i).replace("\u2581", "")
    if any(ch.isdigit() for ch in piece):
      assert len(piece) == 1, piece
  assert [p for p in sp.encode("12345", out_type=str)] == list("12345")
  # Reference solutions (with newlines) decode to exactly the same text.
  for text in corpus[:20]:
    ids = sp.encode(text)
    assert sp.unk_id() not in ids
    assert sp.decode(ids) == text
  # The same corpus and options reuse the file: training is not called again.
  mtime = os.path.getmtime(path)

  def no_training(*args, **kwargs):
    raise AssertionError("retrained despite the cache")

  monkeypatch.setattr(spm.SentencePieceTrainer, "train", no_training)
  assert tasks.train_tokenizer(corpus, tmp_path, vocab_size=256) == path
  assert os.path.getmtime(path) == mtime
  monkeypatch.undo()
  # A different corpus or option is a different model.
  assert tasks.train_tokenizer(corpus[:-1], tmp_path, vocab_size=256) != path
  assert tasks.train_tokenizer(corpus, tmp_path, vocab_size=200) != path
  assert len(list(tmp_path.glob("*.model"))) == 3


def test_unigram_and_bad_options(tmp_path, corpus):
  path = tasks.train_tokenizer(corpus, tmp_path, vocab_size=200, model_type="unigram")
  sp = spm.SentencePieceProcessor(model_file=path)
  assert sp.decode(sp.encode(corpus[5])) == corpus[5]
  with pytest.raises(ValueError, match="model_type"):
    tasks.train_tokenizer(corpus, tmp_path, model_type="wordpiece")
  with pytest.raises(ValueError, match="empty"):
    tasks.train_tokenizer([], tmp_path)


def test_loads_with_the_model_side_tokenizer(tmp_path, corpus):
  from postrain.models.tokenizers import SentencePieceTokenizer

  tok = SentencePieceTokenizer(tasks.train_tokenizer(corpus, tmp_path, vocab_size=256))
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  assert tok.vocab_size <= 256
  assert tok.decode(tok.encode(corpus[3])) == corpus[3]
