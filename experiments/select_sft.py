"""Experiment (a): SFT on the top 20% by HES vs a random 20% vs all data, same steps.

1. A scoring model: the default tiny decoder, SFT for `--proxy_steps` on the chain-sum pool
   (the scorer is a briefly warmed-up model, as GRACE's γ = 5 % warm-up and HES's proxy scorer).
2. `python -m postrain.select`'s `run` scores the pool by HES and keeps the top 20%.
3. Three SFT runs from the same random init, `--steps` steps each, on: the HES top 20%, a random
   20% (seeded), and the whole pool; held-out greedy / sampled pass@1 on the same test problems.

  PYTHONPATH=. python experiments/select_sft.py --workdir runs/exp_select_sft

Prints one JSON line per arm and writes `results.json` in the workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from postrain import select, train
from postrain.train import config as base

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sft_config(steps: int, num_train: int, seed: int = 0):
  c = base.load_config_file(os.path.join(REPO, "configs", "default.py"))
  c.mode = "sft"
  c.seed = seed
  c.task.num_train, c.task.num_eval = num_train, 200
  c.sft.steps, c.sft.batch_size = steps, 32
  c.optimizer.warmup_steps = 10
  c.eval.num_problems, c.eval.k, c.eval.every = 200, 1, 10**6
  c.checkpoint.every = steps
  c.progress_bar = False
  return c


def train_on(workdir: str, c, subset=None) -> dict:
  trainer = train.Trainer(c, workdir)
  if subset is not None:  # same task, test split and tokenizer; only the training pool changes
    ids = set(subset)
    trainer.data.train = [p for p in trainer.data.train if p.id in ids]
  start = time.time()
  report = trainer.run()
  final = report["final"]
  return {
    "n_train": len(trainer.data.train),
    "pass1_greedy": final["pass1_greedy"],
    "pass1_sampled": final["pass1_sampled"],
    "seconds": round(time.time() - start, 1),
  }


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--num_train", type=int, default=1000)
  ap.add_argument("--proxy_steps", type=int, default=40)
  ap.add_argument("--steps", type=int, default=200)
  ap.add_argument("--fraction", type=float, default=0.2)
  args = ap.parse_args()
  os.makedirs(args.workdir, exist_ok=True)

  proxy_dir = os.path.join(args.workdir, "proxy")
  train.train(sft_config(args.proxy_steps, args.num_train), proxy_dir)
  sel_cfg = base.load_config_file(os.path.join(REPO, "configs", "select_hes.py"))
  sel_cfg.checkpoint, sel_cfg.fraction, sel_cfg.output.tfds = proxy_dir, args.fraction, False
  sel_cfg.max_len = 96
  sel_dir = os.path.join(args.workdir, "select_hes")
  metrics = select.run(sel_cfg, sel_dir)
  with open(os.path.join(sel_dir, "scores.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  top = [r["id"] for r in rows if r["selected"]]
  rng = np.random.default_rng(0)
  scored = [r["id"] for r in rows if r["score"] is not None]
  rand = list(rng.choice(scored, size=len(top), replace=False))

  results = {"selection": {k: metrics[k] for k in ("n_pool", "n_selected", "score")}}
  results["selection"]["intrinsic"] = metrics["intrinsic"]
  for arm, subset in (("hes_top", top), ("random", rand), ("all", None)):
    out = train_on(os.path.join(args.workdir, arm), sft_config(args.steps, args.num_train), subset)
    results[arm] = out
    print(json.dumps({"arm": arm, **out}), flush=True)
  with open(os.path.join(args.workdir, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
