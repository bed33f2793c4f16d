"""SFT vs OPD vs MOPD vs RL from one SFT start, on chain sums (arXiv 2605.22731, toy scale).

The four arms differ in where their training states come from and what supervises them:
  sft   dataset prefixes, dataset next token (teacher forcing on the reference solutions);
  opd   the student's own samples, the teacher's full next-token distribution (reverse KL);
  mopd  the student's own samples, the teacher reading 2 successful + 1 failed peer of the
        same group (arXiv 2605.12652), same reverse-KL loss as opd;
  rl    the student's own samples, the verifier's 0/1 reward (GRPO).
All arms start from the same SFT-trained student (d=64, 2 layers), take the same number of
optimizer updates on 64 sequences each, at the same learning rate, and are evaluated on the same
held-out problems (greedy pass@1). The teacher (d=128, 2 layers) is trained by postrain first.

  python experiments/state_distribution.py --out runs/state_distribution

writes `state_distribution.png` and `state_distribution.json` under --out (about 15 minutes on
2 busy CPU cores with the defaults).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARMS = ("sft", "opd", "mopd", "rl")


def _configs():
  from postrain.train.config import load_config_file

  teacher = load_config_file(os.path.join(REPO, "configs", "chain_sum_teacher.py"), "")
  student = load_config_file(os.path.join(REPO, "configs", "chain_sum_opd.py"), "")
  return teacher, student


def arm_config(student, arm: str, args, teacher_dir: str):
  """The config of one arm, from the shared student config."""
  from postrain.train import config as base

  c = student.copy_and_resolve_references()
  c.optimizer.warmup_steps = 5
  c.eval.every, c.eval.num_problems, c.eval.k = args.eval_every, args.eval_problems, 1
  c.checkpoint.every = args.steps
  c.progress_bar = False
  c.sft.steps, c.rl.steps = 0, args.steps
  c.rl.lr = args.lr
  c.teacher.path = teacher_dir
  c.distill.loss = "reverse_kl"
  if arm == "sft":
    c.mode, c.teacher.source = "sft", "none"
    c.sft.steps, c.sft.lr = args.steps, args.lr
    c.sft.batch_size = c.rl.prompts_per_step * c.rl.group_size
  elif arm == "rl":
    c.mode, c.teacher.source = "rl", "none"
    base.set_algorithm(c, "grpo")
  else:
    c.mode = arm
  return c


def main(argv: list[str]) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--out", default="runs/state_distribution")
  p.add_argument("--sft_start_steps", type=int, default=150)
  p.add_argument("--steps", type=int, default=40, help="optimizer updates per arm")
  p.add_argument("--eval_every", type=int, default=10)
  p.add_argument("--eval_problems", type=int, default=100)
  p.add_argument("--lr", type=float, default=5e-4)
  p.add_argument("--arms", default=",".join(ARMS))
  p.add_argument("--teacher", default="", help="existing teacher workdir (default: train one)")
  args = p.parse_args(argv)

  import jax

  jax.config.update("jax_compilation_cache_dir", os.path.join(args.out, "jax_cache"))
  from flax import nnx

  from postrain.sampling import Sampler
  from postrain.train import Trainer, evaluate, load_run

  os.makedirs(args.out, exist_ok=True)
  t0 = time.time()
  teacher_cfg, student = _configs()
  if args.teacher:  # an existing run, used as it is (its newest checkpoint)
    teacher_dir = args.teacher
  else:
    teacher_dir = os.path.join(args.out, "teacher")
    teacher_cfg.progress_bar = False
    Trainer(teacher_cfg, teacher_dir).run()  # resumes / returns if done
  teacher = load_run(teacher_dir, what="--teacher")
  teacher_data = teacher.task_data()
  # The teacher on the arms' held-out problems (the same evaluation as theirs).
  teacher_eval = evaluate(
    Sampler(teacher.model, cache_size=teacher.config.rl.cache_size),
    teacher_data,
    teacher_data.test[: args.eval_problems],
    key=jax.random.key(1),
    k=1,
    max_new_tokens=student.eval.max_new_tokens,
    timeout_s=student.task.verifier_timeout_s,
  )
  teacher_eval["step"] = teacher.step
  tok = teacher.tokenizer
  print(f"teacher: {teacher_eval}  ({time.time() - t0:.0f}s)", flush=True)

  start_cfg = student.copy_and_resolve_references()
  start_cfg.mode, start_cfg.teacher.source = "sft", "none"
  start_cfg.sft.steps, start_cfg.progress_bar = args.sft_start_steps, False
  start_cfg.eval.num_problems, start_cfg.eval.k = args.eval_problems, 1
  start = Trainer(start_cfg, os.path.join(args.out, "start"), tokenizer=tok)
  start_report = start.run()
  print(f"SFT start: {start_report['final']}  ({time.time() - t0:.0f}s)", flush=True)

  curves = {}
  for arm in args.arms.split(","):
    cfg = arm_config(student, arm, args, teacher_dir)
    model = nnx.merge(start.graphdef, start.params, start.rest)
    t_arm = time.time()
    report = Trainer(cfg, os.path.join(args.out, arm), model=model, tokenizer=tok).run()
    evals = sorted(report["evals"], key=lambda e: e["step"])
    if arm == "sft":  # its step-0 point is the shared start
      evals = [dict(start_report["final"], step=0), *evals]
    curves[arm] = [(e["step"], e["pass1_greedy"], e["pass1_sampled"]) for e in evals]
    print(f"{arm}: {curves[arm]}  ({time.time() - t_arm:.0f}s)", flush=True)

  summary = {
    "teacher": teacher_eval,
    "start": start_report["final"],
    "curves": curves,
    "args": vars(args),
    "seconds": time.time() - t0,
  }
  with open(os.path.join(args.out, "state_distribution.json"), "w") as f:
    json.dump(summary, f, indent=2)
  _plot(
    curves,
    teacher_eval["pass1_greedy"],
    os.path.join(args.out, "state_distribution.png"),
  )
  print(json.dumps(summary, indent=2))


def _plot(curves, teacher_acc: float, path: str) -> None:
  from matplotlib.figure import Figure

  fig = Figure(figsize=(6, 4))
  ax = fig.subplots()
  for arm, pts in curves.items():
    ax.plot([s for s, _, _ in pts], [g for _, g, _ in pts], marker="o", label=arm)
  ax.axhline(teacher_acc, color="gray", linestyle="--", label="teacher")
  ax.set_xlabel("optimizer updates after the shared SFT start")
  ax.set_ylabel("held-out greedy pass@1")
  ax.set_title("chain sums: where the training states come from")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


if __name__ == "__main__":
  sys.path.insert(0, REPO)
  main(sys.argv[1:])
