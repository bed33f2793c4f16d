"""Intrinsic metrics of reasoning datasets (arXiv 2605.13290, §3.2), computed before training.

Per-example values averaged over a dataset, reported as a dict by `dataset_metrics`:
- length: characters, whitespace words and (with a tokenizer) tokens of the trace;
- redundancy: `1 − len(zlib(trace)) / len(trace)` on UTF-8 bytes (the paper's Redundancy Ratio)
  and the repeated n-gram rate `1 − unique n-grams / n-grams` (an extra, cheaper lexical view);
- symbolic fraction: share of non-alphanumeric characters (whitespace excluded by default; the
  paper does not say, so `count_whitespace` is explicit);
- semantic alignment: cosine between the embeddings of the query and of the trace;
- semantic flow: mean cosine between embeddings of consecutive sentences;
- perplexity: exp of the mean token NLL (from log-probs the caller computes with a model).
The embedding model (the paper uses mmlw-roberta-large) is a parameter `embed(texts) -> [N, d]`;
`hashed_bow_embedder` is an offline lexical stand-in, not the paper's model. The LLM-judged FVCU
metrics and spaCy syntactic depth are not implemented.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from postrain import _validation as V

Embedder = Callable[[Sequence[str]], Any]
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"\w+", re.UNICODE)


def zlib_redundancy(texts: Sequence[str], *, level: int = 9) -> np.ndarray:
  """Redundancy ratio 1 − |zlib(x)| / |x| on UTF-8 bytes, f32[N] (0 for empty texts)."""
  out = []
  for text in texts:
    raw = text.encode("utf-8")
    out.append(1.0 - len(zlib.compress(raw, level)) / len(raw) if raw else 0.0)
  return np.asarray(out, np.float32)


def ngram_repetition_rate(seqs: Sequence[str | Sequence[Any]], *, n: int = 3) -> np.ndarray:
  """1 − (#distinct n-grams / #n-grams) per sequence, f32[N].

  A string is split into lowercase word tokens; any other sequence (e.g. token ids) is used as
  is. Sequences shorter than n give 0.
  """
  V.check_positive("n", n)
  out = []
  for seq in seqs:
    toks = [w.lower() for w in _WORD.findall(seq)] if isinstance(seq, str) else list(seq)
    grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    out.append(1.0 - len(set(grams)) / len(grams) if grams else 0.0)
  return np.asarray(out, np.float32)


def symbolic_fraction(texts: Sequence[str], *, count_whitespace: bool = False) -> np.ndarray:
  """Share of non-alphanumeric characters, f32[N] ("a+b" -> 1/3). Whitespace is left out of
  numerator and denominator unless `count_whitespace`."""
  out = []
  for text in texts:
    chars = text if count_whitespace else [c for c in text if not c.isspace()]
    out.append(sum(not c.isalnum() for c in chars) / len(chars) if chars else 0.0)
  return np.asarray(out, np.float32)


def split_sentences(text: str) -> list[str]:
  """Sentences split at ., ! or ? followed by whitespace, and at newlines."""
  return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


def cosine_alignment(a: jax.Array, b: jax.Array, *, eps: float = 1e-12) -> jax.Array:
  """cos(a_i, b_i) row-wise: a, b: [N, d] -> f32[N] (0 if either row is zero)."""
  V.check_rank("a", a, 2)
  V.check_floating("a", a)
  V.check_shape("b", b, np.shape(a), like="a")
  a = jnp.asarray(a, jnp.float32)
  b = jnp.asarray(b, jnp.float32)
  den = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
  return jnp.sum(a * b, -1) / jnp.maximum(den, eps)


def semantic_flow(sent_emb: jax.Array, valid: jax.Array, *, eps: float = 1e-12) -> jax.Array:
  """Mean cosine between consecutive valid sentences.

  Args:
    sent_emb: [N, S, d] sentence embeddings, padded; valid: bool[N, S] (valid sentences first).

  Returns:
    f32[N]; 0 for fewer than two sentences.
  """
  V.check_rank("sent_emb", sent_emb, 3)
  V.check_floating("sent_emb", sent_emb)
  V.check_shape("valid", valid, np.shape(sent_emb)[:2], like="sent_emb[..., 0]")
  e = jnp.asarray(sent_emb, jnp.float32)
  v = jnp.asarray(valid) != 0
  pair = v[:, 1:] & v[:, :-1]
  c = cosine_alignment(
    e[:, 1:].reshape(-1, e.shape[-1]), e[:, :-1].reshape(-1, e.shape[-1]), eps=eps
  )
  c = c.reshape(pair.shape)
  return jnp.where(pair, c, 0.0).sum(-1) / jnp.maximum(pair.sum(-1), 1)


def sequence_perplexity(logp: jax.Array, mask: jax.Array) -> jax.Array:
  """exp(−Σ_t logp·mask / Σ_t mask), f32[N]; 1 for an empty row. logp: f32[N, T]."""
  V.check_rank("logp", logp, 2)
  V.check_floating("logp", logp)
  V.check_shape("mask", mask, np.shape(logp), like="logp")
  m = jnp.asarray(mask, jnp.float32)
  nll = -(jnp.asarray(logp, jnp.float32) * m).sum(-1) / jnp.maximum(m.sum(-1), 1.0)
  return jnp.exp(nll)


def spearman(x: Any, y: Any) -> float:
  """Spearman rank correlation with average ranks for ties; 0 if either side is constant."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  if x.ndim != 1 or x.shape != y.shape:
    raise ValueError(f"`x` and `y` must be 1-D of equal length, got {x.shape} and {y.shape}.")

  def ranks(a: np.ndarray) -> np.ndarray:
    order = np.argsort(a, kind="stable")
    r = np.empty(a.size)
    r[order] = np.arange(a.size, dtype=np.float64)
    for val in np.unique(a):  # average ranks over ties
      tie = a == val
      r[tie] = r[tie].mean()
    return r

  rx, ry = ranks(x) - ranks(x).mean(), ranks(y) - ranks(y).mean()
  den = np.sqrt((rx**2).sum() * (ry**2).sum())
  return float((rx * ry).sum() / den) if den > 0 else 0.0


def hashed_bow_embedder(dim: int = 256) -> Embedder:
  """A deterministic bag-of-words embedder (word -> bucket by crc32), L2-normalised.

  Offline, lexical stand-in for a sentence-embedding model; semantic metrics computed with it
  measure word overlap, not meaning.
  """

  def embed(texts: Sequence[str]) -> np.ndarray:
    out = np.zeros((len(texts), dim), np.float32)
    for i, text in enumerate(texts):
      for w in _WORD.findall(text.lower()):
        out[i, zlib.crc32(w.encode()) % dim] += 1.0
    norm = np.linalg.norm(out, axis=-1, keepdims=True)
    return out / np.maximum(norm, 1e-12)

  return embed


def _flow(traces: Sequence[str], embed: Embedder) -> np.ndarray:
  sents = [split_sentences(t) for t in traces]
  s_max = max([len(s) for s in sents] + [1])
  flat = [x for s in sents for x in s]
  e = np.asarray(embed(flat), np.float32) if flat else np.zeros((0, 1), np.float32)
  padded = np.zeros((len(traces), s_max, e.shape[-1]), np.float32)
  valid = np.zeros((len(traces), s_max), bool)
  i = 0
  for n, s in enumerate(sents):
    padded[n, : len(s)] = e[i : i + len(s)]
    valid[n, : len(s)] = True
    i += len(s)
  return np.asarray(semantic_flow(padded, valid))


def per_example_metrics(
  traces: Sequence[str],
  *,
  queries: Sequence[str] | None = None,
  embed: Embedder | None = None,
  tokenizer: Any | None = None,
  ngram: int = 3,
  count_whitespace: bool = False,
) -> dict[str, np.ndarray]:
  """Per-example intrinsic metrics of reasoning traces, each f32[N].

  Always: "chars", "words", "redundancy" (zlib), "ngram_repetition", "symbolic_fraction".
  With `tokenizer` (anything with `encode(str) -> list[int]`): "tokens".
  With `embed`: "semantic_flow", and with `queries` as well: "semantic_alignment".
  """
  traces = list(traces)
  out = {
    "chars": np.asarray([len(t) for t in traces], np.float32),
    "words": np.asarray([len(_WORD.findall(t)) for t in traces], np.float32),
    "redundancy": zlib_redundancy(traces),
    "ngram_repetition": ngram_repetition_rate(traces, n=ngram),
    "symbolic_fraction": symbolic_fraction(traces, count_whitespace=count_whitespace),
  }
  if tokenizer is not None:
    out["tokens"] = np.asarray([len(tokenizer.encode(t)) for t in traces], np.float32)
  if embed is not None and traces:
    out["semantic_flow"] = _flow(traces, embed)
    if queries is not None:
      if len(queries) != len(traces):
        raise ValueError(f"`queries` has {len(queries)} entries but `traces` has {len(traces)}.")
      eq = np.asarray(embed(list(queries)), np.float32)
      et = np.asarray(embed(traces), np.float32)
      out["semantic_alignment"] = np.asarray(cosine_alignment(eq, et))
  return out


def dataset_metrics(traces: Sequence[str], **kwargs: Any) -> dict[str, float]:
  """Dataset-level intrinsic metrics: the mean of each `per_example_metrics` entry.

  Also "n_examples". Perplexity needs a model: average `sequence_perplexity` of
  `postrain.models.logprobs` output yourself and add it to the dict.
  """
  per = per_example_metrics(traces, **kwargs)
  out = {k: float(np.mean(v)) if v.size else 0.0 for k, v in per.items()}
  out["n_examples"] = float(len(traces))
  return out


def metric_gain_correlations(
  metrics_by_dataset: dict[str, dict[str, float]], gains: dict[str, float]
) -> dict[str, float]:
  """Spearman ρ between each dataset-level metric and the downstream gain across datasets
  (the paper's §4.4 analysis). Only metrics present for every dataset are reported."""
  names = sorted(gains)
  if set(names) != set(metrics_by_dataset):
    raise ValueError("`metrics_by_dataset` and `gains` must name the same datasets.")
  keys = set.intersection(*(set(metrics_by_dataset[n]) for n in names)) if names else set()
  g = [gains[n] for n in names]
  return {k: spearman([metrics_by_dataset[n][k] for n in names], g) for k in sorted(keys)}
