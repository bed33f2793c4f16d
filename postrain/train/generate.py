"""Write rollouts of a postrain run's latest checkpoint for F-TIS ingestion by another run.

  python -m postrain.train.generate --workdir runs/teacher --out runs/teacher/rollouts.npz \\
      --num_prompts 64 --group_size 8 --max_new_tokens 40

The prompts are `num_prompts` training problems of the run's own task (drawn with `--seed`); each
gets `group_size` samples at `--temperature`, scored by the task's verifier. A learner on the
same task and tokenizer reads the file with `--config.rl.ftis.path=runs/teacher/rollouts.npz`.
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np

from postrain.sampling import Sampler
from postrain.train import _data, _ftis, _rollout
from postrain.train.runs import load_run


def generate_rollouts(
  workdir: str,
  out_path: str,
  *,
  num_prompts: int,
  group_size: int,
  max_new_tokens: int,
  temperature: float = 1.0,
  seed: int = 0,
  batch_prompts: int = 16,
) -> dict[str, float]:
  """Samples and scores rollouts of run `workdir`'s newest checkpoint into `out_path` (.npz).

  Returns {"num_rollouts", "reward_mean", "checkpoint_step"}.
  """
  from postrain.train.config import validate

  run = load_run(workdir, what="--workdir")
  config = run.config
  validate(config)
  data = run.task_data()
  model, step = run.model, run.step
  sampler = Sampler(model, cache_size=config.rl.cache_size + max_new_tokens)
  problems = _data.step_problems(data.train, seed=seed, step=0, count=num_prompts)
  key = jax.random.key(seed)
  outs, rewards = [], []
  for start in range(0, num_prompts, batch_prompts):
    chunk = problems[start : start + batch_prompts]
    out, texts, _ = _rollout.generate(
      sampler,
      data,
      data.encode_prompts(chunk),
      key=jax.random.fold_in(key, start),
      n=group_size,
      max_new_tokens=max_new_tokens,
      temperature=temperature,
    )
    outs.append(out)
    rewards.append(
      _rollout.score(data, chunk, texts, group_size, config.task.verifier_timeout_s)[0]
    )
  merged = _merge(outs, max_new_tokens, pad=max(data.tokenizer.pad_id, 0))
  reward = np.concatenate(rewards)
  _ftis.write_rollouts(
    out_path,
    merged,
    reward,
    group_size=group_size,
    max_new_tokens=max_new_tokens,
    vocab_size=data.tokenizer.vocab_size,
    problem_ids=[p.id for p in problems],
    generator=os.path.abspath(workdir),
  )
  return {"num_rollouts": float(len(reward)), "reward_mean": float(reward.mean()),
          "checkpoint_step": float(step)}  # fmt: skip


class _Merged:
  pass


def _merge(outs, resp_len: int, *, pad: int):
  """Concatenates sampler outputs whose prompt widths differ (left-padded to the widest)."""
  width = max(np.asarray(o.tokens).shape[1] - resp_len for o in outs)
  m = _Merged()
  for name, fill in (("tokens", pad), ("valid", False), ("response_mask", 0), ("sample_logp", 0)):
    parts = [
      _ftis.realign(np.asarray(getattr(o, name)), resp_len, width, resp_len, fill) for o in outs
    ]
    setattr(m, name, np.concatenate(parts))
  return m


def main(argv: list[str]) -> None:
  import argparse

  p = argparse.ArgumentParser(prog="python -m postrain.train.generate", description=__doc__)
  p.add_argument("--workdir", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--num_prompts", type=int, default=64)
  p.add_argument("--group_size", type=int, default=8)
  p.add_argument("--max_new_tokens", type=int, default=40)
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  try:
    stats = generate_rollouts(
      args.workdir,
      args.out,
      num_prompts=args.num_prompts,
      group_size=args.group_size,
      max_new_tokens=args.max_new_tokens,
      temperature=args.temperature,
      seed=args.seed,
    )
  except (ValueError, FileNotFoundError) as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
  print(" ".join(f"{k}={v:g}" for k, v in stats.items()), f"-> {args.out}")


if __name__ == "__main__":
  main(sys.argv[1:])
