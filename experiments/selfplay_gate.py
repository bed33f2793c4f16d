"""Experiment (b): DSL self-play with the strict execution gate vs without, same reward.

Both runs use the self-consistency (intrinsic) solver reward and the grounded difficulty
proposer reward (the paper's "GI" cell), same seed, model, warm start and steps; only
`gate.mode` differs. Prints the collapse indicators of each run at the start and end.

  PYTHONPATH=. python experiments/selfplay_gate.py --workdir runs/exp_selfplay [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import os

from postrain import selfplay
from postrain.train import config as base
from postrain.train import read_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = (
  "admit/admitted_fraction",
  "pool/size",
  "pool/unique_output_rate",
  "pool/trivial_output_rate",
  "pool/new_trivial_rate",
  "solver/vote_share",
  "solver/grounded_accuracy",
  "solver/gap",
  "solver/unique_answers",
)


def summary(workdir: str, window: int = 10) -> dict:
  recs = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  train = [r for r in recs if r["kind"] == "train"]
  evals = [r for r in recs if r["kind"] == "eval"]
  out = {"val_accuracy": [(r["step"], round(r["val/accuracy"], 3)) for r in evals]}
  for name, part in (("first", train[:window]), ("last", train[-window:])):
    out[name] = {k: round(sum(r.get(k) or 0.0 for r in part) / max(len(part), 1), 3) for k in KEYS}
  return out


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--steps", type=int, default=60)
  ap.add_argument("--solver", default="intrinsic")
  ap.add_argument("--gates", default="strict,off")
  args = ap.parse_args()
  results = {}
  for gate in args.gates.split(","):
    c = base.load_config_file(
      os.path.join(REPO, "configs", "selfplay_dsl.py"), f"gate={gate},solver={args.solver}"
    )
    c.steps, c.progress_bar = args.steps, False
    wd = os.path.join(args.workdir, f"gate_{gate}")
    selfplay.run(c, wd)
    results[gate] = summary(wd)
    print(json.dumps({"gate": gate, **results[gate]}), flush=True)
  with open(os.path.join(args.workdir, f"results_{args.solver}.json"), "w") as f:
    json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
