"""Intrinsic dataset metrics (arXiv 2605.13290 §3.2)."""

import zlib

import jax.numpy as jnp
import numpy as np
import pytest

from postrain.selection._dataset_metrics import (
  cosine_alignment,
  dataset_metrics,
  hashed_bow_embedder,
  metric_gain_correlations,
  ngram_repetition_rate,
  per_example_metrics,
  semantic_flow,
  sequence_perplexity,
  spearman,
  split_sentences,
  symbolic_fraction,
  zlib_redundancy,
)


def test_redundancy_limits():
  rng = np.random.default_rng(0)
  random_text = "".join(chr(c) for c in rng.integers(33, 127, 4000))
  r = zlib_redundancy(["a" * 5000, random_text, "", "abcabcabc"])
  assert r[0] > 0.99
  assert r[1] < 0.25  # 94 printable symbols: log2(94)/8 ≈ 0.82 of the bytes remain
  assert r[2] == 0.0
  np.testing.assert_allclose(r[3], 1 - len(zlib.compress(b"abcabcabc", 9)) / 9, rtol=1e-6)


def test_ngram_repetition_rate():
  # "the cat the cat the cat": bigrams (the cat) x3, (cat the) x2 -> 1 - 2/5.
  np.testing.assert_allclose(ngram_repetition_rate(["the cat the cat the cat"], n=2), [0.6])
  np.testing.assert_allclose(
    ngram_repetition_rate([[1, 2, 3, 4], [5, 5, 5, 5], [1]], n=2), [0, 2 / 3, 0]
  )


def test_symbolic_fraction():
  np.testing.assert_allclose(symbolic_fraction(["a+b", "x = 1", ""]), [1 / 3, 1 / 3, 0.0])
  np.testing.assert_allclose(symbolic_fraction(["x = 1"], count_whitespace=True), [3 / 5])


def test_cosines_and_flow():
  a = jnp.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
  b = jnp.array([[2.0, 0.0], [-1.0, 1.0], [1.0, 0.0]])
  np.testing.assert_allclose(cosine_alignment(a, b), [1.0, 0.0, 0.0], atol=1e-7)
  emb = np.array([[[1, 0], [1, 0], [0, 1], [5, 5]], [[1, 0], [0, 0], [0, 0], [0, 0]]], np.float32)
  valid = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], bool)
  np.testing.assert_allclose(semantic_flow(emb, valid), [0.5, 0.0], atol=1e-7)


def test_perplexity_of_uniform_model_is_vocab_size():
  v = 37
  logp = jnp.full((2, 5), -np.log(v))
  mask = jnp.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
  np.testing.assert_allclose(sequence_perplexity(logp, mask), [v, 1.0], rtol=1e-5)


def test_spearman():
  x = np.array([1.0, 2.0, 3.0, 4.0])
  assert spearman(x, x**3) == pytest.approx(1.0)
  assert spearman(x, -np.exp(x)) == pytest.approx(-1.0)
  # Ties get average ranks: ranks x = [0, 1.5, 1.5, 3]; y = [0, 1, 2, 3].
  xt = np.array([1.0, 2.0, 2.0, 3.0])
  rx = np.array([0, 1.5, 1.5, 3]) - 1.5
  ry = np.arange(4.0) - 1.5
  assert spearman(xt, x) == pytest.approx(rx @ ry / np.sqrt((rx @ rx) * (ry @ ry)))
  assert spearman(np.ones(4), x) == 0.0


def test_split_sentences():
  assert split_sentences("First one. Second? Third!\nFourth") == [
    "First one.",
    "Second?",
    "Third!",
    "Fourth",
  ]


def test_dataset_metrics_and_correlations():
  class Tok:
    def encode(self, text):
      return list(text.encode())

  embed = hashed_bow_embedder(64)
  queries = ["add two and three", "what is the capital of france"]
  traces = [
    "We add two and three. Two and three make five.",
    "The capital of France is Paris. Paris is the capital.",
  ]
  per = per_example_metrics(traces, queries=queries, embed=embed, tokenizer=Tok(), ngram=2)
  assert set(per) == {
    "chars",
    "words",
    "tokens",
    "redundancy",
    "ngram_repetition",
    "symbolic_fraction",
    "semantic_flow",
    "semantic_alignment",
  }
  np.testing.assert_array_equal(per["chars"], [len(t) for t in traces])
  np.testing.assert_array_equal(per["words"], [10, 10])
  np.testing.assert_array_equal(per["tokens"], [len(t.encode()) for t in traces])
  assert np.all(per["semantic_alignment"] > 0.3)  # lexical overlap with the query
  e = embed(["same words here", "same words here", "nothing shared"])
  assert float(cosine_alignment(e[:1], e[1:2])[0]) == pytest.approx(1.0)
  d = dataset_metrics(traces, queries=queries, embed=embed)
  assert d["n_examples"] == 2.0
  assert d["chars"] == pytest.approx(np.mean([len(t) for t in traces]))
  corr = metric_gain_correlations(
    {"a": {"chars": 1.0, "x": 3.0}, "b": {"chars": 2.0, "x": 2.0}, "c": {"chars": 3.0}},
    {"a": 0.1, "b": 0.2, "c": 0.3},
  )
  assert corr == {"chars": pytest.approx(1.0)}
  with pytest.raises(ValueError, match="queries"):
    per_example_metrics(traces, queries=queries[:1], embed=embed)
