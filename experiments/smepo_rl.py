"""Experiment (c): SMEPO-guided RL vs plain RL on a harder chain-sum split, same SFT start.

The harder split: chain sums of 4–5 one-digit terms (more steps than the default 3 terms).
1. Arm "plain": the default tiny decoder, `--sft_steps` SFT, then `--rl_steps` GRPO steps.
2. Arm "smepo": a copy of arm 1's SFT checkpoint (same parameters, optimiser state, step), then
   the same RL with `rl.smepo.enabled=True` (every prompt guided by its masked reference trace).
Both evaluate held-out greedy / sampled pass@1 on the same plain (unguided) test prompts.

  PYTHONPATH=. python experiments/smepo_rl.py --workdir runs/exp_smepo
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

from postrain import train
from postrain.train import config as base

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_config(args, smepo: bool):
  c = base.load_config_file(os.path.join(REPO, "configs", "default.py"), "algorithm=grpo")
  c.task.kwargs = dict(min_terms=4, max_terms=5, min_digits=1, max_digits=1)
  c.task.num_train, c.task.num_eval = 2000, 200
  c.sft.steps, c.sft.batch_size = args.sft_steps, 32
  c.rl.steps, c.rl.lr = args.rl_steps, args.rl_lr
  c.rl.prompts_per_step, c.rl.group_size = 8, 8
  c.rl.max_new_tokens, c.eval.max_new_tokens = 48, 48
  c.sft.max_len = 112
  c.rl.cache_size = 320  # room for the guided prompts
  c.rl.smepo.enabled = smepo
  c.eval.every, c.eval.num_problems, c.eval.k = args.rl_steps // 2, 200, 1
  c.checkpoint.every = args.sft_steps  # a checkpoint exactly at the end of SFT
  c.checkpoint.keep = 5
  c.progress_bar = False
  return c


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--sft_steps", type=int, default=300)
  ap.add_argument("--rl_steps", type=int, default=40)
  ap.add_argument("--rl_lr", type=float, default=5e-5)
  args = ap.parse_args()
  results = {}
  plain_dir = os.path.join(args.workdir, "plain")
  results["plain"] = train.train(make_config(args, False), plain_dir)
  smepo_dir = os.path.join(args.workdir, "smepo")
  if not os.path.exists(smepo_dir):  # start from the plain arm's SFT checkpoint
    os.makedirs(os.path.join(smepo_dir, "checkpoints"))
    src = os.path.join(plain_dir, "checkpoints", str(args.sft_steps))
    shutil.copytree(src, os.path.join(smepo_dir, "checkpoints", str(args.sft_steps)))
    shutil.copytree(os.path.join(plain_dir, "tokenizer"), os.path.join(smepo_dir, "tokenizer"))
  results["smepo"] = train.train(make_config(args, True), smepo_dir)
  for arm, rep in results.items():
    print(json.dumps({"arm": arm, "after_sft": rep.get("after_sft"), "final": rep["final"]}))
  with open(os.path.join(args.workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
