"""Tool use on 4-6 digit chain sums (issue #17, docs/experiments.md): the copy probe and the curves.

  # SFT only, printing every `every` steps the teacher-forced accuracy on 64 held-out tool-use
  # demonstrations: per token of the call (copying the question's expression) and of the answer
  # turn (copying the tool result), and the share of demonstrations whose every model token is the
  # argmax (greedy decoding would reproduce them: a correct call and a correct answer)
  python experiments/tool_use.py probe runs/probe [key=value ...] --steps 400 --every 100 [--arg ARG]

  # both arms' held-out accuracy, tool use and training reward in one figure
  python experiments/tool_use.py plot runs/tools runs/no_tools docs/figures/chain_sum_tools_curves.png

`--arg` is the `configs/chain_sum_tools.py` argument ("tools=False", ...); overrides are
`key=value` on top of it (numbers, booleans and JSON dicts).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "chain_sum_tools.py"


def _config(arg: str, overrides: list[str]):
  from postrain.train import config as config_lib

  c = config_lib.load_config_file(str(CONFIG), arg)
  for item in overrides:
    key, _, value = item.partition("=")
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = (
      json.loads(value)
      if value[:1] in "{["
      else type(node[leaf])(
        value.lower() in ("1", "true") if isinstance(node[leaf], bool) else value
      )
    )
  return c


def probe(args: argparse.Namespace) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from postrain import train

  c = _config(args.arg, args.overrides)
  c.mode, c.sft.steps, c.rl.steps, c.progress_bar = "sft", args.steps, 0, False
  trainer = train.Trainer(c, args.workdir)
  data, tok = trainer.data, trainer.data.tokenizer
  batch = train.sft_batch(data, data.test[:64], c.sft.max_len, tool_frac=1.0)
  tokens, valid = jnp.asarray(batch["tokens"]), jnp.asarray(batch["valid"])
  positions = jnp.maximum(jnp.cumsum(valid, 1) - 1, 0)
  mask = batch["loss_mask"] > 0
  # model turn k (1: the call, 2: the answer) of every loss token
  starts = mask & ~np.pad(mask, ((0, 0), (1, 0)))[:, :-1]
  turn = np.where(mask, np.cumsum(starts, 1), 0)[:, 1:]
  target = batch["tokens"][:, 1:]
  digit = np.isin(target, [tok.encode(str(d))[-1] for d in range(10)])
  # a digit's index in its number (0: the number's first digit)
  index = np.zeros(target.shape, np.int32)
  for t in range(1, target.shape[1]):
    index[:, t] = np.where(digit[:, t - 1], index[:, t - 1] + 1, 0)

  @jax.jit
  def predict(params):
    model = nnx.merge(trainer.graphdef, params, trainer.rest)
    hidden, _ = model(tokens, positions, valid=valid)
    return jnp.argmax(model.logits(hidden), -1)

  def measure() -> dict[str, float]:
    ok = np.asarray(predict(trainer.params))[:, :-1] == target
    out = {}
    for k, name in ((1, "call"), (2, "answer")):
      sel = turn == k
      out[f"{name}_digit_acc"] = float(ok[sel & digit].mean())
      out[f"{name}_exact"] = float(np.mean([ok[i][sel[i]].all() for i in range(len(ok))]))
    call = (turn == 1) & digit
    out["call_first_digit_acc"] = float(ok[call & (index == 0)].mean())
    out["call_later_digit_acc"] = float(ok[call & (index > 0)].mean())
    out["demo_exact"] = float(np.mean([ok[i][turn[i] > 0].all() for i in range(len(ok))]))
    return out

  start = time.perf_counter()
  for i in range(args.steps):
    metrics = trainer._sft_step()
    trainer.step += 1
    if (i + 1) % args.every == 0:
      row = dict(step=i + 1, seconds=round(time.perf_counter() - start), **measure())
      row["sft_loss"] = round(float(metrics["sft_loss"]), 4)
      print(json.dumps(row), flush=True)


def plot(args: argparse.Namespace) -> None:
  from matplotlib.figure import Figure

  from postrain.train import read_jsonl

  fig = Figure(figsize=(11, 4), dpi=110)
  left, right = fig.subplots(1, 2)
  for workdir, color in ((args.tools, "C0"), (args.no_tools, "C1")):
    name = os.path.basename(os.path.normpath(workdir))
    records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    evals = [r for r in records if r["kind"] == "eval"]
    train = [r for r in records if r["kind"] == "train" and r.get("reward_mean") is not None]
    for key, style in (("pass1_greedy", "o-"), ("pass1_sampled", "s--")):
      pts = [(r["step"], r[key]) for r in evals if key in r]
      if pts:
        left.plot(*zip(*pts), style, color=color, label=f"{name} {key}")
    for key, style in (("tool_use_greedy", "^:"), ("tool_correct_greedy", "v-.")):
      pts = [(r["step"], r[key]) for r in evals if key in r]
      if pts:
        left.plot(*zip(*pts), style, color=color, alpha=0.7, label=f"{name} {key}")
    if train:
      right.plot([r["step"] for r in train], [r["reward_mean"] for r in train], color=color,
                 label=f"{name} train reward")  # fmt: skip
  left.set_title("held-out (64 problems)")
  right.set_title("GSPO training reward (mean over 64 episodes)")
  for ax, where in ((left, "center right"), (right, "center right")):
    ax.set_xlabel("step")
    ax.set_ylim(-0.03, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc=where)
  fig.tight_layout()
  fig.savefig(args.out)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("probe")
  p.add_argument("workdir")
  p.add_argument("--steps", type=int, default=400)
  p.add_argument("--every", type=int, default=100)
  p.add_argument("--arg", default="")
  p.add_argument("overrides", nargs="*")
  q = sub.add_parser("plot")
  q.add_argument("tools")
  q.add_argument("no_tools")
  q.add_argument("out")
  args = parser.parse_args()
  probe(args) if args.command == "probe" else plot(args)


if __name__ == "__main__":
  main()
