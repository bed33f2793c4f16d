"""The trainer runs the mesh tests compare: the `scale=test` default config, shortened, with 2 KV
heads so that every dimension divides the meshes tested (in-process Trainer and CLI subprocesses)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import SingleDeviceSharding

from postrain import envs

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "default.py")

# (key, value): applied to the in-process config and passed as --config.key=value to the CLI.
OVERRIDES = (
  ("model.overrides.num_kv_heads", 2),
  ("sft.steps", 2),
  ("rl.steps", 3),
  ("rl.kl_coef", 0.01),  # a frozen reference model: the sharded log-prob function, and its params
  # The tiny model solves nothing after 2 SFT steps: all advantages are 0, and without an entropy
  # bonus the RL updates would have no gradient to compare.
  ("rl.entropy_coef", 0.01),
  ("eval.every", 10),
  ("eval.num_problems", 4),
  ("checkpoint.every", 2),
  ("progress_bar", False),
)


def config(overrides=OVERRIDES, **mesh):
  from postrain.train.config import load_config_file

  cfg = load_config_file(DEFAULT_CONFIG, "scale=test")
  for key, value in overrides:
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  cfg.mesh.update(mesh)
  return cfg


def cli_args(workdir, overrides=OVERRIDES):
  return [
    sys.executable,
    "-m",
    "postrain.train",
    f"--config={DEFAULT_CONFIG}:scale=test",
    f"--workdir={workdir}",
    *(f"--config.{k}={v}" for k, v in overrides),
  ]


def one_device_env(**extra):
  """This environment without the fake-device flag: a one-device CPU process."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTEST_XDIST_WORKER")}
  return dict(env, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, **extra)


def run_one_device(workdir, overrides=OVERRIDES, timeout=600):
  """The unsharded reference: `python -m postrain.train` in a one-device process."""
  proc = subprocess.run(
    cli_args(workdir, overrides),
    env=one_device_env(),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def train_records(workdir):
  """metrics.jsonl records (timings dropped: throughputs and the env stage's seconds)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return [
    {k: v for k, v in r.items() if "per_s" not in k and not k.endswith("time_s")} for r in records
  ]


# Metrics are means over the step's rows, summed in another order by two processes than by one.
# Float32 reduction-order noise is ~1e-7 of the summed terms' scale, not of the result: a KL of
# 1.8e-4 is a sum of p * (log p - log q) terms bounded by the entropy (O(1-5) here), so it moves by
# up to ~1e-7 * 5 absolute. Measured between 1 and 2 processes (OPD, MOPD workdir / EMA): at most
# 2.4e-8 absolute (relative 1.3e-4 on reverse_kl, 5.5e-4 on a top-k divergence of 1.8e-6). ATOL
# keeps a 20x margin over that; a wrong peer order, seed or row moves teacher prompt lengths,
# losses and divergences far beyond it (dropping MOPD's global group offset fails the test).
RECORDS_ATOL = 5e-7


def assert_records_close(actual, expected, rtol=1e-5, atol=RECORDS_ATOL):
  assert [(r["step"], r["kind"]) for r in actual] == [(r["step"], r["kind"]) for r in expected]
  for a, e in zip(actual, expected):
    assert a.keys() == e.keys(), (a.keys(), e.keys())
    for key, value in e.items():
      if isinstance(value, float):
        np.testing.assert_allclose(a[key], value, rtol=rtol, atol=atol, err_msg=f"{e} {key}")
      else:
        assert a[key] == value, (e, key)


def checkpoint_steps(workdir):
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def restore_numpy(workdir, step):
  """A checkpoint's state as numpy arrays on this process's first device, whatever mesh wrote it
  (the target comes from the checkpoint's own metadata, not from any trainer)."""
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  meta = ocp.StandardCheckpointer().metadata(path).item_metadata.tree
  dev = SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), meta)
  with ocp.StandardCheckpointer() as ckpt:
    return jax.tree.map(np.asarray, ckpt.restore(path, target))


def flat(tree):
  """{path: leaf} of a pytree (nnx State or nested dicts), for comparing trees of different types."""
  out = {}
  for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in keys]
    out["/".join(n for n in names if n != "value")] = np.asarray(leaf)
  return out


def assert_trees_close(actual, expected, what, *, atol=1e-4, tight=1e-6, max_loose=1e-3):
  """Trees of the same run computed on different meshes agree to float32 reduction-order noise.

  AdamW divides each update by sqrt(nu) + 1e-8 (`train.make_optimizer`), so for a weight whose
  gradient is ~1e-8 the reduction-order noise of the gradient can move it differently by up to
  ~lr (3e-3 here): every element must agree to `atol`, and all but a fraction `max_loose` of them
  to `tight` (rtol 1e-5 both).
  """
  a, e = flat(actual), flat(expected)
  assert a.keys() == e.keys(), what
  loose = total = 0
  for key in e:
    np.testing.assert_allclose(a[key], e[key], rtol=1e-5, atol=atol, err_msg=f"{what} {key}")
    loose += int(np.sum(~np.isclose(a[key], e[key], rtol=1e-5, atol=tight)))
    total += e[key].size
  assert loose <= max_loose * total, f"{what}: {loose} of {total} elements differ by > {tight}"


def write_foreign_rollouts(path, *, num_groups=3, group_size=4, resp_len=8, vocab_size=256, seed=0):
  """A deterministic F-TIS rollout file (`_ftis.write_rollouts` layout) for the trainer tests:
  left-padded prompts of 3..6 tokens, responses of 1..resp_len tokens, generator log-probs in
  [-4, -0.1] on response tokens, rewards 0/1 with both values in every group (nonzero advantages).
  Token ids avoid 0..2 (pad / special ids of the test tokenizer)."""
  import types

  from postrain.train import _ftis

  rng = np.random.default_rng(seed)
  b, tp = num_groups * group_size, 6
  prompt_len = rng.integers(3, tp + 1, size=b)
  lengths = rng.integers(1, resp_len + 1, size=b)
  col = np.arange(tp + resp_len)[None, :]
  prompt_valid = (col >= tp - prompt_len[:, None]) & (col < tp)
  resp = (col >= tp) & (col < tp + lengths[:, None])
  tokens = np.where(prompt_valid | resp, rng.integers(3, vocab_size, size=(b, tp + resp_len)), 0)
  logp = np.where(resp, rng.uniform(-4.0, -0.1, size=(b, tp + resp_len)), 0.0)
  rewards = rng.integers(0, 2, size=(num_groups, group_size)).astype(np.float32)
  rewards[:, 0], rewards[:, 1] = 1.0, 0.0
  out = types.SimpleNamespace(
    tokens=tokens.astype(np.int32),
    valid=prompt_valid | resp,
    response_mask=resp.astype(np.float32),
    sample_logp=logp.astype(np.float32),
  )
  _ftis.write_rollouts(
    str(path),
    out,
    rewards.reshape(-1),
    group_size=group_size,
    max_new_tokens=resp_len,
    vocab_size=vocab_size,
  )


class ObserveEnv(envs.Env):
  """A multi-turn test environment (config.env.name="trainer_case:ObserveEnv"): after each model
  turn it returns the observation "obs{t}:" until turn k = 1 + (a hash of the question) % 3, then
  ends; pays 0.5 per turn whose text has an even length (reward variance for the updates) and
  counts each observation it returns as a call of the tool "observe" (per-tool metrics)."""

  def __init__(self, format="compact"):
    del format

  def reset(self, problem):
    import zlib

    question = getattr(problem, "question", problem)
    self.k, self.t = 1 + zlib.crc32(question.encode()) % 3, 0
    return [{"role": "user", "content": question}]

  def step(self, model_text):
    self.t += 1
    reward = 0.5 * (len(model_text) % 2 == 0)
    if self.t >= self.k:
      return None, reward, True
    return f"obs{self.t}:", reward, False

  def corpus(self):
    return ["obs1: obs2: obs3:"]

  def episode_stats(self):
    calls = min(self.t, self.k - 1)
    return {
      "tool_calls": calls,
      "tool_errors": 0,
      "tool_seconds": 0.0,
      "calls_per_tool": {"observe": calls} if calls else {},
      "errors_per_kind": {},
    }


def make_eos_heavy(trainer, factor=40.0):
  """Scales the untied head's EOS column (global params, any mesh): turns stop after a few tokens,
  so episodes run several turns (a random model would almost never stop)."""
  eos = trainer.data.tokenizer.eos_id

  def heavy(params):
    def one(path, x):
      if "lm_head" in jax.tree_util.keystr(path):
        return x.at[:, eos].multiply(factor)
      return x

    return jax.tree_util.tree_map_with_path(one, params)

  trainer.params = jax.jit(heavy, out_shardings=trainer.param_shardings)(trainer.params)
