"""Data scoring and selection: HES (arXiv 2605.22389), GRACE (arXiv 2605.13130) and intrinsic
dataset metrics (arXiv 2605.13290).

  from postrain import selection
  hes = selection.hes_score(entropy, mask)                 # f32[B]
  keep = selection.select_top_fraction(hes, 0.2, valid=correct)

Arrays in, arrays out: the scorers that run a model (`model_hes`, `model_grace_scores`,
`model_entropy`) are in `postrain.select`, beside the command that uses them.
"""

from postrain.selection._by_score import (
  hes_group_downsample,
  kept_group_advantages,
  select_top_fraction,
  select_top_k,
  select_top_k_per_group,
)
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
from postrain.selection._grace import (
  GraceScores,
  grace_scores,
  grace_scores_from_upstream,
  upstream_gradients,
)
from postrain.selection._hes import (
  entropy_variants,
  hes_score,
  hes_token_counts,
  token_entropy,
)
from postrain.selection._trace_steps import pack_steps, split_steps

__all__ = [
  "GraceScores",
  "cosine_alignment",
  "dataset_metrics",
  "entropy_variants",
  "grace_scores",
  "grace_scores_from_upstream",
  "hashed_bow_embedder",
  "hes_group_downsample",
  "hes_score",
  "hes_token_counts",
  "kept_group_advantages",
  "metric_gain_correlations",
  "ngram_repetition_rate",
  "pack_steps",
  "per_example_metrics",
  "select_top_fraction",
  "select_top_k",
  "select_top_k_per_group",
  "semantic_flow",
  "sequence_perplexity",
  "spearman",
  "split_sentences",
  "split_steps",
  "symbolic_fraction",
  "token_entropy",
  "upstream_gradients",
  "zlib_redundancy",
]
