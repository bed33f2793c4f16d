"""Self-play on the deterministic DSL (arXiv 2605.22217): one tiny model proposes and solves.

  python -m postrain.selfplay --config configs/selfplay_dsl.py --workdir runs/selfplay_strict
  python -m postrain.selfplay --config configs/selfplay_dsl.py:gate=off --workdir runs/selfplay_off
  python -m postrain.selfplay --config configs/selfplay_dsl.py:solver=grounded,scale=test --workdir /tmp/sp

Args: gate ("strict" | "off"), solver ("intrinsic" self-consistency | "grounded"), scale
("default" | "test").
"""

import ml_collections as mlc

from postrain.train import config as base


def get_config(arg: str | None = None):
  arg = base.parse_arg(arg, gate="strict", solver="intrinsic", scale="default")
  c = mlc.ConfigDict()
  c.seed = 0
  c.language = "dsl"  # the task family ("python": configs/selfplay_python.py)
  c.gate = mlc.ConfigDict()
  c.gate.mode = arg.gate  # "strict": parse + evaluate + no output leak; "off": every parsed task
  c.gate.leak_rate = 0.0  # ε: a rejected task is admitted with this probability (strict mode)
  c.solver_reward = arg.solver  # "grounded" (executor output) or "intrinsic" (vote share)
  c.proposer_label = "grounded"  # α̂ against the executor output, or "intrinsic_vote"
  c.proposer_reward_mode = "hard"  # R_P = 1 - α̂ ("medium": peak at α̂ = 0.5)
  c.program_depth = 2
  c.seed_pool = 24  # the paper's DSL seed pool size
  c.max_pool = 16384
  c.val_tasks = 64
  c.num_refs = 2  # reference tasks shown to the proposer
  c.vocab_size = 128
  c.tokenizer_tasks = 400  # generated tasks the tokenizer is trained on
  c.model = mlc.ConfigDict()
  c.model.name = "tiny"
  c.model.overrides = dict(
    embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=256
  )
  # LoRA / QLoRA as in the trainer (README "LoRA / QLoRA"): rank > 0 trains only adapters.
  c.model.lora = base.lora_config()
  c.model.quantize = "none"  # "int8" / "nf4": the frozen base quantised (needs lora.rank > 0)
  c.sft = mlc.ConfigDict()
  c.sft.steps = 300
  c.sft.pool = 2000  # generated tasks of the warm start
  c.sft.batch_size = 32
  c.sft.lr = 3e-3
  c.sft.max_len = 96
  c.steps = 60
  c.proposals = 16  # proposer samples per step (a multiple of group_size)
  c.solver_tasks = 8
  c.group_size = 8
  c.lr = 2e-4
  c.temperature = 1.0
  c.max_new_tokens = 32
  c.cache_size = 160
  c.eval_every = 10
  c.progress_bar = True
  if arg.scale == "test":
    c.model.overrides = dict(
      embed_dim=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64
    )
    c.sft.steps, c.sft.batch_size, c.steps = 3, 8, 2
    c.proposals, c.solver_tasks, c.group_size = 4, 2, 2
    c.val_tasks, c.max_new_tokens, c.eval_every = 4, 16, 1
    c.progress_bar = False
  return c
