"""Golden metrics of short fixed-seed runs: the regression guard of the trainer redesign (issue 14).

Every algorithm config (`configs/chain_sum_*.py`) and the OPD, MOPD, SCRL+SMEPO and F-TIS runs, at
`scale=test` shortened to 2 SFT + 2 RL steps, plus the main job (`configs/default.py:scale=test`,
seed 0: its report.json and metrics). Recorded once into `golden_metrics.json`; `test_golden.py`
reruns them and compares every metric to float32 reduction-order tolerance.

The test-scale model solves nothing after 2 SFT steps, so with the task's verifier every reward is
0 and every advantage 0: the policy losses would be untested. The algorithm runs therefore score
with `pseudo_score_batch`: the verifier's reward, or 1 for a completion of even length (a
deterministic function of the sampled text, so groups have reward variance). The main job uses the
real verifier.

Regenerate (after a change that is meant to change the numbers, and say so in the commit):

  PYTHONPATH=$PWD python tests/train/golden.py --update
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
GOLDEN = os.path.join(HERE, "golden_metrics.json")

# Shorter than scale=test: 2 SFT + 2 RL steps of 2 prompts x 4 samples, 2 minibatches each, the
# evaluation only before RL and at the end, on 4 problems.
SHORT = (
  ("sft.steps", 2),
  ("rl.steps", 2),
  ("rl.prompts_per_step", 2),
  ("rl.group_size", 4),
  ("rl.updates_per_batch", 2),
  ("eval.every", 100),
  ("eval.num_problems", 4),
  ("eval.k", 1),
  ("checkpoint.every", 100),
  ("progress_bar", False),
)

# name -> (config file, its arg, overrides after SHORT). "{teacher}" / "{rollouts}" are filled in.
_ALGORITHMS = (
  "grpo",
  "dapo",
  "dr_grpo",
  "gspo",
  "gspo_token",
  "cispo",
  "conspo",
  "scrl",
  "sapo",
  "gmpo",
)
RUNS: dict[str, tuple[str, str, tuple[tuple[str, object], ...]]] = {
  **{a: (f"chain_sum_{a}.py", "scale=test", ()) for a in _ALGORITHMS},
  # A frozen reference model (KL) and an entropy bonus on top of GRPO.
  "grpo_kl_entropy": (
    "chain_sum_grpo.py",
    "scale=test",
    (("rl.kl_coef", 0.05), ("rl.entropy_coef", 0.01)),
  ),
  "scrl_smepo": (
    "chain_sum_scrl.py",
    "scale=test",
    (("rl.smepo.enabled", True), ("rl.smepo.fraction", 0.5), ("rl.cache_size", 192)),
  ),
  "ftis": (
    "chain_sum_grpo.py",
    "scale=test",
    (("rl.ftis.path", "{rollouts}"), ("rl.ftis.prompts_per_step", 2)),
  ),
  "opd": (
    "default.py",
    "scale=test",
    (("mode", "opd"), ("teacher.source", "workdir"), ("teacher.path", "{teacher}")),
  ),
  "mopd": (
    "default.py",
    "scale=test",
    (
      ("mode", "mopd"),
      ("teacher.source", "workdir"),
      ("teacher.path", "{teacher}"),
      ("distill.context", "contrastive"),
      ("distill.loss", "topk"),
      ("distill.topk", 8),
    ),
  ),
  # The SFT-only teacher config (a wider model), at its smoke scale, shortened.
  "teacher_sft": (
    "chain_sum_teacher.py",
    "scale=smoke",
    (("sft.batch_size", 8), ("eval.max_new_tokens", 12)),
  ),
}


def load() -> dict:
  with open(GOLDEN) as f:
    return json.load(f)


def pseudo_score_batch(real):
  """`tasks.score_batch` with reward max(verifier, 1 if len(completion) is even)."""

  def score_batch(task, problems, completions, **kwargs):
    rewards, stats = real(task, problems, completions, **kwargs)
    even = np.array([len(c) % 2 == 0 for c in completions], np.float32)
    return np.maximum(np.asarray(rewards, np.float32), even), stats

  return score_batch


def run_config(name: str, teacher: str, rollouts: str, extra=()):
  from postrain.train.config import load_config_file

  path, arg, overrides = RUNS[name]
  c = load_config_file(os.path.join(REPO, "configs", path), arg)
  for key, value in (*SHORT, *overrides, *extra):
    if isinstance(value, str):
      value = value.format(teacher=teacher, rollouts=rollouts)
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def records(workdir: str) -> list[dict]:
  """metrics.jsonl without the timings."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [{k: v for k, v in r.items() if "per_s" not in k} for r in rows]


def main_job_config():
  from postrain.train.config import load_config_file

  return load_config_file(os.path.join(REPO, "configs", "default.py"), "scale=test")


def main_job_result(workdir: str) -> dict:
  with open(os.path.join(workdir, "report.json")) as f:
    return {"report": json.load(f), "records": records(workdir)}


def write_rollouts(path: str) -> None:
  sys.path.insert(0, os.path.join(REPO, "tests", "sharding"))
  import trainer_case

  trainer_case.write_foreign_rollouts(path, num_groups=3, group_size=4, resp_len=8)


def run(name: str, teacher: str, workdir: str, rollouts: str, extra=()) -> list[dict]:
  """Trains run `name` (with `extra` (key, value) overrides) in `workdir` (its task data and
  tokenizer copied from the main job's `teacher` workdir when the task matches) with the pseudo
  verifier; returns its records."""
  from postrain import tasks, train

  cfg = run_config(name, teacher, rollouts, extra)
  if cfg.task.kwargs.to_dict() == main_job_config().task.kwargs.to_dict():
    os.makedirs(workdir, exist_ok=True)
    for sub in ("data", "tokenizer"):
      shutil.copytree(os.path.join(teacher, sub), os.path.join(workdir, sub), dirs_exist_ok=True)
  real = tasks.score_batch
  tasks.score_batch = pseudo_score_batch(real)
  try:
    train.train(cfg, workdir)
  finally:
    tasks.score_batch = real
  return records(workdir)


def assert_close(actual, expected, what: str, rtol: float = 1e-6, atol: float = 1e-7) -> None:
  """Same records (steps, kinds, keys), floats to float32 noise: metrics are means of f32 sums,
  so a relative 1e-6 of the value, or 1e-7 absolute near zero."""
  if isinstance(expected, dict):
    assert isinstance(actual, dict) and actual.keys() == expected.keys(), (
      what,
      sorted(set(actual) ^ set(expected)),
    )
    for k in expected:
      assert_close(actual[k], expected[k], f"{what}.{k}", rtol, atol)
  elif isinstance(expected, list):
    assert isinstance(actual, list) and len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected)):
      assert_close(a, e, f"{what}[{i}]", rtol, atol)
  elif isinstance(expected, float):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)
  else:
    assert actual == expected, (what, actual, expected)


def _main(argv: list[str]) -> None:
  import tempfile

  import jax

  jax.config.update("jax_compilation_cache_dir", os.path.join(REPO, ".jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  from postrain import train

  if "--update" not in argv:
    raise SystemExit(__doc__)
  names = [a for a in argv if not a.startswith("--")] or ["main_job", *RUNS]
  golden = {}
  if os.path.exists(GOLDEN):
    with open(GOLDEN) as f:
      golden = json.load(f)
  with tempfile.TemporaryDirectory() as tmp:
    teacher = os.path.join(tmp, "main_job")
    train.train(main_job_config(), teacher)
    if "main_job" in names or "main_job" not in golden:
      golden["main_job"] = main_job_result(teacher)
    rollouts = os.path.join(tmp, "foreign.npz")
    write_rollouts(rollouts)
    for name in names:
      if name == "main_job":
        continue
      print("golden run", name, flush=True)
      golden.setdefault("runs", {})[name] = run(name, teacher, os.path.join(tmp, name), rollouts)
  with open(GOLDEN, "w") as f:
    json.dump(golden, f, indent=1, sort_keys=True)
    f.write("\n")
  print("wrote", GOLDEN)


if __name__ == "__main__":
  _main(sys.argv[1:])
