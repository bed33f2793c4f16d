"""The config schema shared by every file in `configs/` (big_vision style: configs are Python).

`base_config()` returns an unlocked `ml_collections.ConfigDict` with every key the trainer reads and
its default; a config file changes what it needs and returns it. `python -m postrain.train` loads the
file with `lock_config=True`, so an override of a key that does not exist fails with the valid keys
listed, and `validate(config)` rejects bad values before any compilation.
"""

from __future__ import annotations

from typing import Any

import ml_collections as mlc

from postrain import sharding, tasks
from postrain.train import algorithms, stages

MODES = ("sft", "rl", "opd", "mopd")
# The registry's algorithms (postrain/train/algorithms.py); `rl.algorithm` may also name a user's
# loss as "package.module:function".
ALGORITHMS = tuple(algorithms.REGISTRY)
MODEL_SOURCES = ("scratch", "hf", "gguf")
TOKENIZERS = ("sentencepiece", "hf", "gguf")


def lora_config() -> mlc.ConfigDict:
  """`config.model.lora`'s defaults (the trainer's and self-play's): rank 0 = off."""
  lora = mlc.ConfigDict()
  lora.rank = 0
  lora.alpha = 0.0  # scale alpha / rank; 0 = rank (scale 1)
  # Regexes (re.search) over projection paths such as "layers/3/attn/q", "layers/3/mlp/down".
  lora.targets = (r"attn/(q|k|v|o)$", r"mlp/(gate|up|down)$")
  # Adapter dropout on the adapters' input in the training forward only (PEFT's lora_dropout).
  lora.dropout = 0.0
  # Sampling from a merged copy (W + scale A B, built once per step) rather than applying the
  # adapters at every decode step (False: no second copy of the projections). Equal on a
  # SmolLM2-135M RL step (ratio 0.997, docs/benchmarks.md); merged decodes as a full model does.
  lora.sample_merged = True
  return lora


def validate_lora(c: mlc.ConfigDict) -> None:
  """Raises ValueError naming the key for bad `config.model.lora` / `config.model.quantize`."""

  def need(ok: bool, key: str, msg: str) -> None:
    if not ok:
      raise ValueError(f"config.{key}: {msg}")

  _validate_lora(c, need)


def base_config() -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  c.seed = 0
  # "sft": supervised only; "rl": SFT warm start (if sft.steps > 0), then RL; "opd" / "mopd":
  # SFT warm start, then on-policy distillation from `teacher` (settings in `distill`, sampling
  # and step count in `rl`). See postrain/train/_distill.py.
  c.mode = "rl"
  c.log_every = 1
  c.progress_bar = True

  c.task = mlc.ConfigDict()
  c.task.name = "chain_sum"  # any postrain.tasks name, or "jsonl" with task.jsonl_path
  c.task.kwargs = mlc.ConfigDict()  # difficulty knobs passed to the reasoning-gym generator
  c.task.num_train = 2000
  c.task.num_eval = 200
  c.task.prompt_format = "plain"  # "plain" or "chat"
  # The instruction before the question: "default" (the task's) or the text itself ("" for none).
  c.task.instruction = "default"
  c.task.jsonl_path = ""
  # Per-completion deadline of the verifier (answer extraction and scoring together).
  c.task.verifier_timeout_s = 2.0
  # What counts as the final answer (postrain.tasks.extract_answer): "marked" (a \boxed{} or an
  # `answer: X` line), "any" (those, then the last number: instruct models answering in prose),
  # "boxed", "answer_line" or "last_number".
  c.task.extract = "marked"
  c.task.extract_max_chars = tasks.MAX_EXTRACT_CHARS  # extraction reads only the last N characters
  # Training reward of a wrong answer that is explicitly marked (boxed / answer line), so groups
  # of a model still learning the format are not all zero. In [0, 0.5): accuracy counts > 0.5.
  # Evaluation never pays it.
  c.task.format_reward = 0.0

  c.tokenizer = mlc.ConfigDict()
  c.tokenizer.kind = "sentencepiece"  # trained on the task corpus, cached in the workdir
  c.tokenizer.vocab_size = 512
  c.tokenizer.path = ""  # sentencepiece .model or tokenizer.json; "" for the default of `kind`
  # The chat template for task.prompt_format="chat": "chatml", "smollm2" or "qwen3".
  c.tokenizer.chat_template = "chatml"

  c.model = mlc.ConfigDict()
  c.model.source = "scratch"  # "scratch", "hf" (checkpoint dir) or "gguf" (file)
  c.model.name = "tiny"  # a postrain.models named config (for source="scratch")
  c.model.overrides = mlc.ConfigDict()  # ModelConfig fields replacing the named config's (scratch)
  c.model.path = ""
  c.model.dtype = "float32"  # compute (activation) dtype: "float32" or "bfloat16"
  # Storage dtype of the weights, and so of the optimiser state; "" = model.dtype. Mixed
  # precision: dtype="bfloat16", param_dtype="float32" (bf16 matmuls, f32 master weights).
  c.model.param_dtype = ""
  # Activation rematerialisation of the decoder blocks in the update (models.REMAT_POLICIES:
  # "none", "block", "save_dots", "save_dots_no_batch"); "auto": "block" for imported models
  # (source hf / gguf), "none" from scratch.
  c.model.remat = "auto"
  c.model.logprob_impl = "chunked"  # "naive", "chunked" or "pallas" (postrain.kernels)
  # LoRA (`models.add_lora`): rank 0 = off (full fine-tuning). With rank r > 0 only the adapters
  # train (float32, with their optimiser state); the base is frozen, passed to the compiled
  # update as an argument, and with the adapters off it is the KL reference (no second copy).
  c.model.lora = lora_config()
  # The frozen base's storage with LoRA: "none", "int8" (per channel) or "nf4" (QLoRA, blocks of
  # 64), qwix. Needs lora.rank > 0 (a quantised base cannot be trained).
  c.model.quantize = "none"

  c.optimizer = mlc.ConfigDict()
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 20
  c.optimizer.min_lr_ratio = 0.1  # cosine decay to lr * min_lr_ratio
  c.optimizer.weight_decay = 0.01
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.98
  c.optimizer.grad_clip = 1.0

  c.sft = mlc.ConfigDict()
  c.sft.steps = 0
  c.sft.batch_size = 64
  c.sft.lr = 3e-3
  c.sft.max_len = 128
  # Rows per micro-batch of an SFT update (gradients accumulated into one optimiser step); 0: all.
  c.sft.microbatch_rows = 0
  # Share of the training problems demonstrated by the answer line alone, without the working
  # (a mixed-quality SFT corpus; RL then has a better behaviour to select). 0 for none.
  c.sft.terse_fraction = 0.0
  # With config.env: share of the training problems demonstrated by a tool-use episode of the
  # environment (`Env.demonstration`; the tool results are context, not loss). 0 for none.
  c.sft.tool_fraction = 0.0
  # Compact-format tool demonstrations only: the call's argument and the answer value right-aligned
  # in fields of this many tokens (leading spaces; the calculator and the verifier strip them), so
  # that every copied token (question -> call, tool result -> answer) sits at one fixed distance
  # from its source, a copy a tiny model learns from few examples. 0: no padding.
  c.sft.tool_align_call = 0
  c.sft.tool_align_answer = 0

  c.rl = mlc.ConfigDict()
  c.rl.algorithm = "gspo"  # a name of train.algorithms.REGISTRY, or "package.module:function"
  c.rl.loss_kwargs = mlc.ConfigDict()  # keyword arguments of a user's loss function
  c.rl.advantage = "group_normalized"  # or "rloo" (train.algorithms.ADVANTAGES)
  c.rl.steps = 0
  c.rl.prompts_per_step = 16
  c.rl.group_size = 8
  c.rl.updates_per_batch = 2  # optimiser steps per rollout batch (minibatches), with old log-probs
  # Rows per micro-batch of an RL / OPD / MOPD update: each minibatch's gradient is accumulated
  # over micro-batches of whole groups into one optimiser step (same loss, metrics and step as
  # without; the activations of one micro-batch alive at a time). 0: the whole minibatch at once.
  c.rl.microbatch_rows = 0
  # The update runs a prompt's columns once for its group_size samples (`RLBatch.prompt_group`,
  # `models.Decoder.shared_prefix`): the same loss and gradient up to float32 summation order, in
  # (prompt / group_size + response) / (prompt + response) of the forward and backward work.
  c.rl.share_prompt = True
  c.rl.lr = 1e-4
  c.rl.max_new_tokens = 64
  c.rl.cache_size = 192
  c.rl.temperature = 1.0
  c.rl.top_k = 0
  c.rl.top_p = 1.0
  c.rl.eps_low = 3e-4  # GSPO's sequence-level clip range; configs for token-level losses set 0.2
  c.rl.eps_high = 4e-4
  c.rl.dual_clip = 0.0  # 0 disables; otherwise c > 1
  c.rl.agg = "seq_mean_token_mean"
  c.rl.kl_coef = 0.0  # > 0 keeps a frozen reference model
  c.rl.kl_kind = "k3"
  c.rl.entropy_coef = 0.0
  c.rl.adv_scale = "group"  # "group" (GRPO), "none" (Dr.GRPO), "batch"
  c.rl.dynamic_sampling = False  # DAPO: drop zero-variance groups from the update
  c.rl.conspo_tau = 10.0
  c.rl.conspo_margin = 0.01
  c.rl.conspo_margin_warmup = 0.3
  c.rl.scrl_curriculum_frac = 0.5  # SCRL: fraction of SFT rows that are curriculum examples
  c.rl.scrl_num_subproblems = 0  # SCRL: keep the last K subproblems of each chain (0: all)
  algorithms.add_sections(c.rl)  # each algorithm's own hyperparameters: rl.sapo.tau_pos, ...
  # The optional stages' own sub-configs (train/stages.py: rl.smepo, rl.temporal, ...) and the
  # user's stages ("package.module:ENTRY", added by `stages.use` in a config file).
  stages.add_sections(c.rl)
  c.rl.stages = ()

  # F-TIS (arXiv 2605.22537): RL on rollouts written by another model (`python -m
  # postrain.train.generate`), with capped IS weights and the KL filter (postrain/train/_distill.py).
  c.rl.ftis = mlc.ConfigDict()
  c.rl.ftis.path = ""  # an .npz of foreign rollouts; "" disables
  c.rl.ftis.prompts_per_step = 4  # foreign groups added to each RL batch
  c.rl.ftis.cap = 2.0
  c.rl.ftis.kl_threshold = 50.0
  c.rl.ftis.level = "token"  # "token" | "sequence" | "geometric"
  c.rl.ftis.use_is = True
  c.rl.ftis.use_filter = True
  c.rl.ftis.kl_estimator = "k3"
  c.rl.ftis.kl_reduce = "sum"

  from postrain.train._distill_config import distill_config, teacher_config

  c.teacher = teacher_config()
  c.distill = distill_config()

  # Multi-turn, tool-using rollouts (postrain.envs; postrain/train/_env_stage.py). name: "none"
  # (single-turn), "calculator", "python", "tools" (the tools `env.tools` names, comma-separated),
  # a registered environment or "package.module:attr". format: "auto" (chat prompts: "hermes",
  # plain: "compact"), "hermes" or "compact". max_total_tokens: tokens after the prompt (model and
  # tool tokens), 0: only rl.cache_size bounds them. The reward is the verifier's on the final
  # turn plus success_reward / error_reward per successful / failed tool call.
  c.env = mlc.ConfigDict(
    dict(
      name="none",
      format="auto",
      tools="",
      max_turns=4,
      max_total_tokens=0,
      tool_timeout_s=5.0,
      success_reward=0.0,
      error_reward=0.0,
    )
  )

  c.eval = mlc.ConfigDict()
  c.eval.every = 50
  c.eval.num_problems = 200
  c.eval.k = 4  # pass@k from k samples per problem
  c.eval.max_new_tokens = 64

  # The compiler's memory plan of the updates, printed at startup; a config whose update cannot
  # fit is refused (naming rl.microbatch_rows / model.remat). check: "auto" (imported models),
  # "on" or "off"; limit_gb: 0 = the device's memory (CPU: physical RAM).
  c.memory = mlc.ConfigDict(dict(check="auto", limit_gb=0.0))

  c.checkpoint = mlc.ConfigDict()
  c.checkpoint.every = 50
  c.checkpoint.keep = 3

  # Device mesh and partitioning (postrain.sharding; README "Scale out"). Axis sizes: -1 takes the
  # remaining devices. The rules are tuples so `--config.sharding_rules="((regex, (axes...)), ...)"`
  # works from the command line; a config file may assign lists (stored as tuples).
  c.mesh = mlc.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding_rules = tuple(sharding.default_rules())  # (parameter path regex, logical axes)
  c.logical_axis_rules = tuple(sharding.default_logical_axis_rules())  # (logical, mesh axes)
  c.sharding_allow_replication = False  # True: replicate a dimension the mesh does not divide
  # Multi-process runs (train._distributed.initialize_distributed); empty: the environment's
  # JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, else one process.
  c.distributed = mlc.ConfigDict(
    dict(coordinator_address="", num_processes=0, process_id=-1, local_device_ids="", auto=False)
  )
  # Reliability switches (issue 15; README "Reliability").
  c.check_finite = False  # stop at the first non-finite train/eval metric, naming it and the step
  c.sft.allow_truncation = False  # True: train on SFT examples cut at sft.max_len (answer lost)
  return c


def validate(c: mlc.ConfigDict) -> None:
  """Raises ValueError naming the key for values the trainer cannot run with."""

  def need(ok: bool, key: str, msg: str) -> None:
    if not ok:
      raise ValueError(f"config.{key}: {msg}")

  need(c.mode in MODES, "mode", f"must be one of {MODES}, got {c.mode!r}")
  need(
    c.model.source in MODEL_SOURCES,
    "model.source",
    f"must be one of {MODEL_SOURCES}, got {c.model.source!r}",
  )
  need(
    c.model.source == "scratch" or bool(c.model.path),
    "model.path",
    "is required when model.source != 'scratch'",
  )
  need(
    c.model.logprob_impl in ("naive", "chunked", "pallas"),
    "model.logprob_impl",
    f"must be naive, chunked or pallas, got {c.model.logprob_impl!r}",
  )
  need(
    c.model.dtype in ("float32", "bfloat16"),
    "model.dtype",
    f"must be float32 or bfloat16, got {c.model.dtype!r}",
  )
  need(
    c.model.param_dtype in ("", "float32", "bfloat16"),
    "model.param_dtype",
    f"must be '', float32 or bfloat16, got {c.model.param_dtype!r}",
  )
  remats = ("auto", "none", "block", "save_dots", "save_dots_no_batch")
  need(c.model.remat in remats, "model.remat", f"must be one of {remats}, got {c.model.remat!r}")
  _validate_lora(c, need)
  need(
    c.memory.check in ("auto", "on", "off"),
    "memory.check",
    f"must be auto, on or off, got {c.memory.check!r}",
  )
  need(c.memory.limit_gb >= 0, "memory.limit_gb", "must be >= 0 (0: the device's memory)")
  need(
    c.tokenizer.kind in TOKENIZERS,
    "tokenizer.kind",
    f"must be one of {TOKENIZERS}, got {c.tokenizer.kind!r}",
  )
  need(c.task.prompt_format in ("plain", "chat"), "task.prompt_format", "must be 'plain' or 'chat'")
  need(
    c.task.name != "jsonl" or bool(c.task.jsonl_path),
    "task.jsonl_path",
    "is required when task.name == 'jsonl'",
  )
  need(c.task.num_eval >= 1, "task.num_eval", "must be >= 1")
  need(
    c.task.extract in tasks.EXTRACT_MODES,
    "task.extract",
    f"must be one of {tasks.EXTRACT_MODES}, got {c.task.extract!r}",
  )
  need(c.task.extract_max_chars >= 1, "task.extract_max_chars", "must be >= 1")
  need(
    0.0 <= c.task.format_reward < 0.5,
    "task.format_reward",
    f"must be in [0, 0.5) (accuracy counts rewards > 0.5), got {c.task.format_reward}",
  )
  need(c.sft.steps >= 0, "sft.steps", "must be >= 0")
  need(c.sft.batch_size >= 1, "sft.batch_size", "must be >= 1")
  need(0.0 <= c.sft.terse_fraction <= 1.0, "sft.terse_fraction", "must be in [0, 1]")
  need(0.0 <= c.sft.tool_fraction <= 1.0, "sft.tool_fraction", "must be in [0, 1]")
  need(c.sft.tool_align_call >= 0, "sft.tool_align_call", "must be >= 0 (0: off)")
  need(c.sft.tool_align_answer >= 0, "sft.tool_align_answer", "must be >= 0 (0: off)")
  need(
    c.sft.tool_fraction == 0 or c.env.name != "none",
    "sft.tool_fraction",
    "needs an environment (config.env.name) to demonstrate",
  )
  algorithms.validate(c, need)  # the name, the advantage estimator, the algorithm's own checks
  stages.validate(c, need)  # the optional stages' own checks (rl.smepo.*, a user's stages)
  need(c.rl.steps >= 0, "rl.steps", "must be >= 0")
  need(
    c.rl.group_size >= 2,
    "rl.group_size",
    f"must be >= 2 (group-relative advantages need at least two samples per prompt), got {c.rl.group_size}",
  )
  need(c.rl.prompts_per_step >= 1, "rl.prompts_per_step", "must be >= 1")
  batch = c.rl.prompts_per_step * c.rl.group_size
  need(
    batch % c.rl.updates_per_batch == 0,
    "rl.updates_per_batch",
    f"must divide the rollout batch prompts_per_step * group_size = {batch}",
  )
  need(
    (batch // c.rl.updates_per_batch) % c.rl.group_size == 0,
    "rl.updates_per_batch",
    "each minibatch must hold whole groups (prompts_per_step must be divisible by updates_per_batch)",
  )
  need(c.sft.microbatch_rows >= 0, "sft.microbatch_rows", "must be >= 0 (0: the whole batch)")
  need(
    c.sft.microbatch_rows == 0 or c.sft.batch_size % c.sft.microbatch_rows == 0,
    "sft.microbatch_rows",
    f"must divide sft.batch_size = {c.sft.batch_size}",
  )
  groups = c.rl.prompts_per_step + (c.rl.ftis.prompts_per_step if c.rl.ftis.path else 0)
  mb_rows = groups * c.rl.group_size // max(c.rl.updates_per_batch, 1)
  need(c.rl.microbatch_rows >= 0, "rl.microbatch_rows", "must be >= 0 (0: the whole minibatch)")
  need(
    c.rl.microbatch_rows == 0
    or (mb_rows % c.rl.microbatch_rows == 0 and c.rl.microbatch_rows % c.rl.group_size == 0),
    "rl.microbatch_rows",
    f"must divide the minibatch's {mb_rows} rows and be a multiple of rl.group_size = "
    f"{c.rl.group_size} (whole groups)",
  )
  need(
    (0 <= c.rl.eps_low < 1 or (c.rl.eps_low == 1 and c.rl.algorithm == "cispo"))
    and c.rl.eps_high >= 0,
    "rl.eps_low/eps_high",
    "clip ranges must be in [0, 1) (cispo's eps_low in [0, 1]: 1 is no lower bound)",
  )
  need(c.rl.dual_clip == 0 or c.rl.dual_clip > 1, "rl.dual_clip", "must be 0 (off) or > 1")
  need(c.rl.temperature > 0, "rl.temperature", "must be > 0 for RL sampling")
  need(0 < c.rl.top_p <= 1, "rl.top_p", "must be in (0, 1]")
  need(
    c.rl.cache_size > c.rl.max_new_tokens,
    "rl.cache_size",
    "must exceed rl.max_new_tokens (room for the prompt)",
  )
  need(
    c.checkpoint.every >= 1 and c.checkpoint.keep >= 1, "checkpoint", "every and keep must be >= 1"
  )
  need(c.eval.k >= 1, "eval.k", "must be >= 1")
  need(c.eval.num_problems >= 1, "eval.num_problems", f"must be >= 1, got {c.eval.num_problems}")
  need(
    c.eval.num_problems <= c.task.num_eval,
    "eval.num_problems",
    f"must be <= task.num_eval={c.task.num_eval} (the held-out problems), "
    f"got {c.eval.num_problems}",
  )
  from postrain.train._distill_config import validate_distill

  validate_distill(c, need)
  _validate_sharding(c, need)
  from postrain.train._env_stage import validate_env

  validate_env(c, need)


def _validate_lora(c: mlc.ConfigDict, need: Any) -> None:
  lora = c.model.lora
  need(
    isinstance(lora.rank, int) and lora.rank >= 0,
    "model.lora.rank",
    f"must be an integer >= 0 (0 = no LoRA), got {lora.rank!r}",
  )
  need(lora.alpha >= 0, "model.lora.alpha", f"must be >= 0 (0 = rank), got {lora.alpha}")
  need(
    isinstance(lora.dropout, int | float) and 0 <= lora.dropout < 1,
    "model.lora.dropout",
    f"must be in [0, 1), got {lora.dropout!r}",
  )
  need(
    lora.dropout == 0 or lora.rank > 0,
    "model.lora.dropout",
    f"adapter dropout {lora.dropout} needs adapters; set model.lora.rank > 0",
  )
  need(
    not isinstance(lora.targets, str) and len(lora.targets) > 0,
    "model.lora.targets",
    f"must be a non-empty list of regexes, got {lora.targets!r}",
  )
  modes = ("none", "int8", "nf4")
  need(
    c.model.quantize in modes, "model.quantize", f"must be one of {modes}, got {c.model.quantize!r}"
  )
  need(
    c.model.quantize == "none" or lora.rank > 0,
    "model.quantize",
    f"a {c.model.quantize} base is frozen and cannot be trained; set model.lora.rank > 0 (QLoRA)",
  )


def _validate_sharding(c: mlc.ConfigDict, need: Any) -> None:
  """The mesh / rules / distributed keys (config only; the device count is checked by the
  trainer when it builds the mesh, still before any compilation)."""
  import re

  mesh = c.mesh.to_dict() if hasattr(c.mesh, "to_dict") else dict(c.mesh)
  for axis, size in mesh.items():
    need(
      axis in sharding.MESH_AXES,
      f"mesh.{axis}",
      f"unknown mesh axis; the axes are {list(sharding.MESH_AXES)}",
    )
    need(
      not isinstance(size, bool) and isinstance(size, int) and (size == -1 or size >= 1),
      f"mesh.{axis}",
      f"must be a positive int or -1 (the remaining devices), got {size!r}",
    )
  rest = [a for a, s in mesh.items() if s == -1]
  need(len(rest) <= 1, "mesh", f"axes {rest} are all -1; at most one axis may take the rest")
  for i, rule in enumerate(c.sharding_rules):
    ok = isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)
    ok = ok and isinstance(rule[1], (tuple, list))
    ok = ok and all(a is None or isinstance(a, str) for a in rule[1])
    need(ok, f"sharding_rules[{i}]", f"must be (regex, (logical axis or None, ...)), got {rule!r}")
    try:
      re.compile(rule[0])
    except re.error as err:
      need(False, f"sharding_rules[{i}]", f"bad regex {rule[0]!r}: {err}")
  for i, rule in enumerate(c.logical_axis_rules):
    ok = isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)
    axes = () if not ok or rule[1] is None else (rule[1],) if isinstance(rule[1], str) else rule[1]
    ok = ok and isinstance(axes, (tuple, list)) and all(a in sharding.MESH_AXES for a in axes)
    need(
      ok,
      f"logical_axis_rules[{i}]",
      f"must be (logical axis, mesh axis | (mesh axes...) | None) with mesh axes in "
      f"{list(sharding.MESH_AXES)}, got {rule!r}",
    )
  d = c.distributed
  need(d.num_processes >= 0, "distributed.num_processes", "must be >= 0 (0: from the environment)")
  need(d.process_id >= -1, "distributed.process_id", "must be >= 0, or -1 (from the environment)")


def parse_arg(arg: str | None, **defaults: Any) -> mlc.ConfigDict:
  """Parses a config file's `:arg` string `"k1=v1,k2=v2"` over `defaults` (big_vision style).

  Values are converted to the type of the default; an unknown key is an error.
  """
  out = mlc.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      raise ValueError(f"config arg {item!r}: expected key=value with key in {sorted(defaults)}")
    kind = type(defaults[key])
    out[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
  return out


def set_algorithm(c: mlc.ConfigDict, algorithm: str) -> mlc.ConfigDict:
  """Sets `c.rl.algorithm` and that algorithm's default hyperparameters (its registry entry's);
  returns `c`."""
  algorithms.set_defaults(c, algorithm)
  return c


def load_config_file(path: str, arg: str | None = None) -> mlc.ConfigDict:
  """`get_config(arg)` of a config file (what `--config path:arg` loads), for notebooks and tests."""
  import importlib.util
  import os

  if not os.path.exists(path):
    raise FileNotFoundError(f"config file not found: {path!r}")
  spec = importlib.util.spec_from_file_location(f"postrain_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()
