"""Tool use that matters for a tiny model: chain sums of 3-4 terms with 4-6 digit numbers, with a
`calculator` tool (compact call format) or without tools, SFT warm start then GSPO (issue 17).

The SFT corpus is mixed: with tools, half the problems are demonstrated by a tool-use episode
(`call: calculator(<expression>)`, the real result as context, then `answer: <result>`), the rest
by worked or terse no-tool answers; without tools, by the worked / terse answers alone. GSPO then
runs the same steps on both. Recorded in docs/experiments.md.

  python -m postrain.train --config configs/chain_sum_tools.py --workdir runs/tools
  python -m postrain.train --config configs/chain_sum_tools.py:tools=False --workdir runs/no_tools
  python -m postrain.train --config configs/chain_sum_tools.py:scale=smoke --workdir runs/tools_smoke
"""

from postrain.train import config as base


def get_config(arg: str | None = None):
  arg = base.parse_arg(arg, scale="default", tools=True)
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
    c.sft.tool_fraction = 0.5
  c.sft.steps = 200
  c.sft.terse_fraction = 0.5
  c.sft.batch_size = 32
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
  return c
