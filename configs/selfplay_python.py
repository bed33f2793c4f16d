"""Self-play on Python output prediction (arXiv 2605.22217's coding setting): one tiny model
proposes short Python functions with an input and predicts their outputs; labels come only from
the sandboxed execution gate (subprocesses with time / memory limits, run twice for determinism,
output-leak check).

  python -m postrain.selfplay --config configs/selfplay_python.py --workdir runs/selfplay_py
  python -m postrain.selfplay --config configs/selfplay_python.py:gate=off --workdir runs/sp_py_off
  python -m postrain.selfplay --config configs/selfplay_python.py:leak=0.1 --workdir runs/sp_py_e01
  python -m postrain.selfplay --config configs/selfplay_python.py:solver=grounded,scale=test \
      --workdir /tmp/sp_py

Args: gate ("strict" | "off"), solver ("intrinsic" self-consistency | "grounded"), leak (ε, the
leak rate of the strict gate), scale ("default" | "test").
"""

import ml_collections as mlc

from postrain.train import config as base


def get_config(arg: str | None = None):
  arg = base.parse_arg(arg, gate="strict", solver="intrinsic", leak=0.0, scale="default")
  c = mlc.ConfigDict()
  c.seed = 0
  c.language = "python"
  c.gate = mlc.ConfigDict()
  c.gate.mode = arg.gate  # "strict": runs, deterministic, no output leak; "off": every parsed task
  c.gate.leak_rate = float(arg.leak)  # ε: a rejected task is admitted with this probability
  c.gate.timeout_s = 3.0  # wall-clock limit of one sandboxed run
  c.gate.cpu_s = 1  # RLIMIT_CPU
  c.gate.memory_mb = 256  # RLIMIT_AS
  c.gate.check_determinism = True  # run twice, same output required
  c.gate.workers = 4  # sandboxed runs in flight at once
  c.solver_reward = arg.solver  # "grounded" (executor output) or "intrinsic" (vote share)
  c.proposer_label = "grounded"  # α̂ against the executor output, or "intrinsic_vote"
  c.proposer_reward_mode = "hard"  # R_P = 1 - α̂ ("medium": peak at α̂ = 0.5)
  c.program_depth = 2  # maps composed by the seed-program templates
  c.seed_pool = 32  # the paper's coding seed pool size
  c.max_pool = 16384
  c.val_tasks = 64
  c.num_refs = 2  # reference tasks shown to the proposer
  c.vocab_size = 256
  c.tokenizer_tasks = 256  # generated tasks the tokenizer is trained on (each runs in the sandbox)
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
  c.sft.pool = 512  # generated tasks of the warm start (each runs in the sandbox)
  c.sft.batch_size = 32
  c.sft.lr = 3e-3
  c.sft.max_len = 160
  c.steps = 60
  c.proposals = 16  # proposer samples per step (a multiple of group_size)
  c.solver_tasks = 8
  c.group_size = 8
  c.lr = 2e-4
  c.temperature = 1.0
  c.max_new_tokens = 64
  c.cache_size = 256  # two reference tasks of up to max_new_tokens, then a proposal
  c.eval_every = 10
  c.progress_bar = True
  if arg.scale == "test":
    c.model.overrides = dict(
      embed_dim=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64
    )
    c.sft.steps, c.sft.batch_size, c.sft.pool, c.steps = 3, 8, 16, 2
    c.seed_pool, c.tokenizer_tasks = 8, 32
    c.proposals, c.solver_tasks, c.group_size = 4, 2, 2
    c.val_tasks, c.max_new_tokens, c.eval_every = 4, 16, 1
    c.progress_bar = False
  return c
