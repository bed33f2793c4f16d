"""The trainer's RL step, this checkout against another (e.g. `main`), in one invocation.

Each side runs in its own subprocess with its checkout first on `PYTHONPATH` (the same config,
seed, problems and device): a `Trainer` at `configs/default.py:scale=<scale>` enters the RL phase
and takes `--steps` RL steps (`Trainer._rl_step`: sample, score, advantages, update), timed to
`block_until_ready` of the parameters; the first `--warmup` steps (compilation) are dropped. The
sides alternate `--rounds` times; reported: each side's median step time and their ratio.

  git archive main | tar -x -C /tmp/postrain_main
  python benchmarks/rl_step_compare.py --baseline /tmp/postrain_main [--scale test] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(scale: str, steps: int, warmup: int, out: str) -> None:
  import jax

  from postrain import train
  from postrain.train.config import load_config_file

  c = load_config_file(os.path.join(HERE, "configs", "default.py"), f"scale={scale}")
  c.sft.steps, c.rl.steps, c.progress_bar = 0, steps + warmup, False
  with tempfile.TemporaryDirectory() as workdir:
    tr = train.Trainer(c, workdir)
    tr._enter_rl()
    times = []
    for _ in range(steps + warmup):
      start = time.perf_counter()
      tr._rl_step()
      jax.block_until_ready(tr.params)
      times.append(time.perf_counter() - start)
      tr.step += 1
  with open(out, "w") as f:
    json.dump({"times": times[warmup:], "postrain": train.__file__}, f)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--baseline", required=True, help="another checkout's root (e.g. of main)")
  parser.add_argument("--scale", default="test")
  parser.add_argument("--steps", type=int, default=8)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--worker", nargs=2, metavar=("ROOT", "OUT"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    worker(args.scale, args.steps, args.warmup, args.worker[1])
    return
  sides = {"this": HERE, "baseline": os.path.abspath(args.baseline)}
  times: dict[str, list[float]] = {name: [] for name in sides}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(args.rounds):
      for name, root in sides.items():
        out = os.path.join(tmp, f"{name}{r}.json")
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", root, out]
        cmd += ["--scale", args.scale, "--steps", str(args.steps), "--warmup", str(args.warmup)]
        cmd += ["--baseline", root]
        subprocess.run(cmd, env=env, check=True, cwd=root)
        with open(out) as f:
          res = json.load(f)
        if not res["postrain"].startswith(root):
          raise RuntimeError(f"{name}: imported postrain from {res['postrain']}, not {root}")
        times[name] += res["times"]
  med = {name: statistics.median(t) for name, t in times.items()}
  for name in sides:
    print(
      f"{name:9s} {sides[name]}: median RL step {med[name] * 1e3:.1f} ms over {len(times[name])}"
    )
  print(f"ratio this / baseline: {med['this'] / med['baseline']:.3f}")


if __name__ == "__main__":
  main()
