"""Per-process data loading: two trainer processes (2 CPU devices each, `jax.distributed` on
localhost) each load, sample and score only their half of every step's problems, and the run
equals the one-process run (metrics and checkpoint)."""

import json
import os
import re
import sys

import process_group
import pytest
import trainer_case as case

ANY_DEVICES = True  # spawns its own processes: runs in-process whatever this process's devices
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_trainer_process_worker.py")
TIMEOUT_S = 600


def _launch(num: int, workdir, overrides=()) -> list[dict]:
  os.makedirs(workdir, exist_ok=True)
  port = process_group.free_port()
  extra = json.dumps([list(kv) for kv in overrides])
  cmds = [
    [sys.executable, WORKER, str(port), str(i), str(num), str(workdir), extra] for i in range(num)
  ]
  process_group.run(
    cmds, [case.one_device_env()] * num, workdir, timeout_s=TIMEOUT_S, cwd=case.REPO
  )
  return [json.loads(open(os.path.join(workdir, f"done_{i}.json")).read()) for i in range(num)]


def _by_step(log):
  return {(step, kind): ids for step, kind, ids in log}


def check_two_processes_equal_one(tmp_path, overrides=(), steps=((0, "sft"), (1, "rl"), (2, "rl"))):
  """Runs the worker on 1 and on 2 processes with `overrides`: each process of the pair loaded
  half of every step's problems (disjoint, process 0's then process 1's = the one-process list),
  and the metrics and the final checkpoint equal the one-process run's. `steps`: the training
  (step, kind) entries expected; evaluations ("eval") are checked alike. Returns the three logs."""
  ref_dir, two_dir = tmp_path / "one", tmp_path / "two"
  (ref,) = _launch(1, ref_dir, overrides)
  p0, p1 = _launch(2, two_dir, overrides)
  assert ref["devices"] == 1 and p0["devices"] == p1["devices"] == 4
  ref_log, log0, log1 = (
    _by_step(ref["problem_log"]),
    _by_step(p0["problem_log"]),
    _by_step(p1["problem_log"]),
  )
  assert sorted(ref_log) == sorted(log0) == sorted(log1)
  assert sorted(k for k in ref_log if k[1] != "eval") == sorted(steps)
  for key, full in ref_log.items():
    mine0, mine1 = log0[key], log1[key]
    assert len(mine0) == len(mine1) == len(full) // 2, key  # an even split of the step
    assert not set(mine0) & set(mine1), key  # disjoint
    if key[1] == "eval":  # each batch of 64 problems is split: the eval test checks the order
      assert sorted(mine0 + mine1) == sorted(full), key
    else:
      assert mine0 + mine1 == full, key  # process 0's rows, then process 1's: the global order

  # Same numbers as one process: the metrics process 0 wrote, and the final checkpoint.
  ref_run, two_run = str(ref_dir / "run"), str(two_dir / "run")
  records = case.train_records(two_run)
  assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]
  case.assert_records_close(records, case.train_records(ref_run))
  assert case.checkpoint_steps(two_run) == case.checkpoint_steps(ref_run) == [3]
  saved, expected = case.restore_numpy(two_run, 3), case.restore_numpy(ref_run, 3)
  case.assert_trees_close(saved, expected, "checkpoint after SFT + 2 RL steps")
  return ref_log, log0, log1


@pytest.mark.slow
def test_each_process_loads_its_own_problems_and_the_run_equals_one_process(tmp_path):
  check_two_processes_equal_one(tmp_path)


# SCRL's interleaved prompts need a larger cache than the plain ones (curriculum prompts).
SCRL = (
  ("rl.algorithm", "scrl"),
  ("rl.agg", "token_mean"),
  ("rl.eps_high", 0.28),
  ("rl.cache_size", 192),
)
# Half the prompts guided: the guided set (seeded over the step's global indices) and the plain
# rest fall on both processes.
SMEPO = (("rl.smepo.enabled", True), ("rl.smepo.fraction", 0.5), ("rl.cache_size", 192))


@pytest.mark.slow
def test_scrl_run_with_per_process_groups_equals_one_process(tmp_path):
  check_two_processes_equal_one(tmp_path, SCRL)
  records = case.train_records(str(tmp_path / "two" / "run"))
  assert any("scrl_format_ok" in r for r in records)  # the SCRL step ran


@pytest.mark.slow
def test_smepo_and_ftis_run_equals_one_process(tmp_path):
  # Both in one run (each process start costs ~20 s): SMEPO guides half the own prompts, F-TIS
  # appends 3 foreign groups, 2 per step (step 1 takes groups 2 and 0: wraps around the file).
  path = tmp_path / "foreign.npz"
  case.write_foreign_rollouts(path, num_groups=3, group_size=4, resp_len=8)
  ftis = (("rl.ftis.path", str(path)), ("rl.ftis.prompts_per_step", 2))
  check_two_processes_equal_one(tmp_path, (*SMEPO, *ftis))
  rl = [r for r in case.train_records(str(tmp_path / "two" / "run")) if "ftis_kl_mean" in r]
  assert len(rl) == 2 and all(r["smepo/guided_frac"] == 0.5 for r in rl)  # 2 of 4 guided


# Multi-turn episodes (issue 17): each process runs the environments of its own groups, the
# conversation is one global computation (prompts and observations all-gathered). The test env
# returns observations for 1-3 turns, the EOS-heavy untied head ends turns after a few tokens.
MULTITURN = (
  ("env.name", "trainer_case:ObserveEnv"),
  ("env.max_turns", 4),
  ("rl.cache_size", 160),
  ("model.overrides.tie_embeddings", False),
  ("eos_heavy", True),
)


@pytest.mark.slow
def test_env_run_with_per_process_episodes_equals_one_process(tmp_path):
  check_two_processes_equal_one(tmp_path, MULTITURN)
  records = case.train_records(str(tmp_path / "two" / "run"))
  rl = [r for r in records if "turns_per_episode" in r]
  assert len(rl) == 2  # both RL steps ran episodes; their metrics equal one process's (above)
  assert all(r["turns_per_episode"] > 1.0 and r["context_tokens_per_episode"] > 0 for r in rl)
  assert all("tool_calls_per_episode/observe" in r for r in rl)
  assert any("tool_use_greedy" in r for r in records)  # evaluation episodes, each process its share


def test_ftis_block_that_does_not_split_over_the_batch_axes_is_refused():
  import types

  from postrain.train import _mesh_context

  cfg = case.config((("rl.ftis.path", "foreign.npz"), ("rl.ftis.prompts_per_step", 1)))
  ctx = types.SimpleNamespace(batch_ways=8, mesh=types.SimpleNamespace(shape={"data": 8}))
  with pytest.raises(ValueError, match=re.escape("config.rl.ftis.prompts_per_step: the 4 foreign")):
    _mesh_context._check_batch_sizes(cfg, ctx)
  cfg.rl.ftis.prompts_per_step = 2  # 8 foreign rows split, but the minibatches have 12 rows
  with pytest.raises(ValueError, match=re.escape("config.rl.ftis.prompts_per_step: each update")):
    _mesh_context._check_batch_sizes(cfg, ctx)
  ctx.batch_ways = 4  # (4 + 2) * 4 / 2 = 12 rows per minibatch: 3 per piece
  _mesh_context._check_batch_sizes(cfg, ctx)


@pytest.mark.parametrize(
  ("key", "value"), [("rl.prompts_per_step", 3), ("sft.batch_size", 5)], ids=["rl", "sft"]
)
def test_batch_that_does_not_split_over_processes_is_refused(monkeypatch, key, value):
  from postrain.train import _mesh_context

  cfg = case.config(((key, value),), data=1, tensor=-1)  # one batch piece: only this check
  monkeypatch.setattr(_mesh_context.jax, "process_count", lambda: 2)
  with pytest.raises(ValueError, match=re.escape(f"config.{key}: ") + ".* 2 processes"):
    _mesh_context.mesh_context(cfg)
