"""The config sections of the distillation modes: `config.teacher` and `config.distill` (defaults
and checks), read by `config.py` without importing the distillation step (`_distill.py`)."""

from __future__ import annotations

import ml_collections as mlc

from postrain import tasks

SOURCES = ("none", "workdir", "hf", "gguf", "ema")


def teacher_config() -> mlc.ConfigDict:
  """Defaults of `config.teacher`."""
  t = mlc.ConfigDict()
  t.source = "none"  # "none", "workdir", "hf", "gguf" or "ema"
  t.path = ""  # postrain workdir, HF checkpoint dir or GGUF file
  # For source="workdir": replace the model of the teacher run's config.json (rarely needed).
  t.model_name = ""
  t.overrides = mlc.ConfigDict()
  t.dtype = "float32"
  t.ema_decay = 0.95  # source="ema": θ_T <- decay θ_T + (1 - decay) θ (MOPD: rate 0.05)
  t.vocab_map = ""  # optional .npy i32[V_s]: student token id -> teacher token id
  return t


LOSSES = ("reverse_kl", "jsd", "topk", "pg")
CONTEXTS = ("positive", "contrastive")


def distill_config() -> mlc.ConfigDict:
  """Defaults of `config.distill` (sampling, steps and lr come from `config.rl`)."""
  d = mlc.ConfigDict()
  d.loss = "reverse_kl"  # "reverse_kl", "jsd", "topk" or "pg" (see postrain/train/_distill.py)
  d.alpha = 0.5  # JSD_α teacher weight for "jsd" / "topk" (1 = reverse KL, 0 = forward KL)
  d.topk = 16  # "topk": number of student top ids (MOPD: 100 for real vocabularies)
  d.tail = True  # "topk": add the tail bucket (False: renormalise over the k ids)
  d.temperature = 1.0  # softmax temperature of both models in the divergence
  d.agg = "token_mean"
  d.is_clip = 2.0  # MOPD's cap of the ratio π_θ/π_old on later minibatches; 0 disables
  # Teachability-aware release (arXiv 2605.13643).
  d.release = False
  d.release_k = 4
  d.release_num_segments = 16
  # MOPD teacher context (arXiv 2605.12652): 2 successes + 1 failure ("2S1F") by default.
  d.context = "contrastive"  # "positive" (successes only) or "contrastive" (+ failures)
  d.max_peers = 2
  d.max_failures = 1
  d.success_threshold = 0.5
  d.peer_order = "cyclic"  # "cyclic", "index" or "random" (postrain.tasks.mopd.select_peers)
  d.drop_no_peer = False  # True: rows without peers get no loss (MOPD code); False: plain OPD
  d.max_teacher_prompt_len = 384  # longer teacher prompts fall back to the plain prompt
  return d


def validate_distill(c: mlc.ConfigDict, need) -> None:
  """Checks of `config.teacher`, `config.distill` and `config.rl.ftis` (called by `validate`)."""
  t, d, f = c.teacher, c.distill, c.rl.ftis
  need(
    t.source in SOURCES,
    "teacher.source",
    f"must be one of {SOURCES}, got {t.source!r}",
  )
  if c.mode in ("opd", "mopd"):
    need(t.source != "none", "teacher.source", f"mode {c.mode!r} needs a teacher")
  need(
    t.source in ("none", "ema") or bool(t.path),
    "teacher.path",
    f"is required for teacher.source={t.source!r}",
  )
  need(0.0 <= t.ema_decay <= 1.0, "teacher.ema_decay", "must be in [0, 1]")
  need(d.loss in LOSSES, "distill.loss", f"must be one of {LOSSES}, got {d.loss!r}")
  need(0.0 <= d.alpha <= 1.0, "distill.alpha", "must be in [0, 1]")
  need(d.topk >= 1, "distill.topk", "must be >= 1")
  need(d.temperature > 0, "distill.temperature", "must be > 0")
  need(d.is_clip == 0 or d.is_clip >= 1, "distill.is_clip", "must be 0 (off) or >= 1")
  need(d.release_k >= 2, "distill.release_k", "must be >= 2")
  need(d.release_num_segments >= 1, "distill.release_num_segments", "must be >= 1")
  need(d.context in CONTEXTS, "distill.context", f"must be one of {CONTEXTS}, got {d.context!r}")
  need(d.max_peers >= 0 and d.max_failures >= 0, "distill.max_peers", "counts must be >= 0")
  need(d.peer_order in tasks.mopd.ORDERS, "distill.peer_order", f"must be in {tasks.mopd.ORDERS}")
  need(d.max_teacher_prompt_len >= 1, "distill.max_teacher_prompt_len", "must be >= 1")
  if f.path:
    need(c.mode == "rl", "rl.ftis.path", "foreign rollouts are used by mode 'rl' only")
    # Which algorithms take F-TIS's per-token weights is the registry's `is_weights`
    # (`algorithms.validate`).
    need(f.prompts_per_step >= 1, "rl.ftis.prompts_per_step", "must be >= 1")
    need(f.cap > 0, "rl.ftis.cap", "must be > 0")
    groups = c.rl.prompts_per_step + f.prompts_per_step
    need(
      groups % c.rl.updates_per_batch == 0,
      "rl.updates_per_batch",
      f"must divide the {groups} groups of an F-TIS batch (own + foreign)",
    )
