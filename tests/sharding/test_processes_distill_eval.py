"""Per-process distillation steps (OPD, MOPD) and per-process evaluation: two trainer processes
(2 CPU devices each, `jax.distributed` on localhost) each sample, score and prepare only their half
of every step's groups and of every evaluation batch, and the run equals the one-process run
(problem split, metrics including the eval records, final checkpoint)."""

import re

import numpy as np
import pytest
import trainer_case as case
from test_trainer_processes import check_two_processes_equal_one

ANY_DEVICES = True  # spawns its own processes: runs in-process whatever this process's devices

DISTILL_STEPS = ((0, "sft"), (1, "distill"), (2, "distill"))
# The teacher: a short SFT-only run of the same task and sizes (its tokenizer is the students').
# Another seed: its logits differ from the student's at O(1), so the divergence metrics compare
# to float32 reduction-order noise in relative terms (a near-copy gives a KL of ~1e-5).
TEACHER_OVERRIDES = (
  ("model.overrides.num_kv_heads", 2),
  ("seed", 7),
  ("mode", "sft"),
  ("sft.steps", 2),
  ("eval.every", 10),
  ("eval.num_problems", 4),
  ("checkpoint.every", 2),
  ("progress_bar", False),
)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("teacher")
  case.run_one_device(str(workdir), TEACHER_OVERRIDES)
  return str(workdir)


def _eval_keys(log):
  return sorted(step for step, kind in log if kind == "eval")


@pytest.mark.slow
def test_opd_with_release_per_process_equals_one_process(tmp_path, teacher_dir):
  overrides = (
    ("mode", "opd"),
    ("teacher.source", "workdir"),
    ("teacher.path", teacher_dir),
    ("distill.release", True),  # the margin pass, sentence segments and release on local rows
  )
  check_two_processes_equal_one(tmp_path, overrides, steps=DISTILL_STEPS)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["workdir", "ema"])
def test_mopd_per_process_equals_one_process(tmp_path, teacher_dir, source):
  overrides = (
    ("mode", "mopd"),
    ("teacher.source", source),
    ("teacher.path", teacher_dir if source == "workdir" else ""),
    # The random peer order is seeded by the global group index; contrastive peers make every
    # row's teacher prompt differ from its student prompt (the tiny model solves nothing).
    ("distill.peer_order", "random"),
    ("distill.context", "contrastive"),
    ("distill.loss", "topk"),
    ("distill.topk", 8),
  )
  check_two_processes_equal_one(tmp_path, overrides, steps=DISTILL_STEPS)


@pytest.mark.slow
def test_evaluation_per_process_equals_one_process(tmp_path):
  # Two evaluation batches (64 + 4 problems), evaluated after SFT, after each RL step and at the end.
  overrides = (("task.num_eval", 68), ("eval.num_problems", 68), ("eval.every", 1))
  ref_log, log0, _ = check_two_processes_equal_one(tmp_path, overrides)
  assert _eval_keys(ref_log) == [1, 2, 3]
  full, mine0 = ref_log[(1, "eval")], log0[(1, "eval")]
  assert len(full) == 68
  # Process 0 evaluated the first half of each batch: problems 0-31 and 64-65.
  assert mine0 == full[:32] + full[64:66]
  # The tiny model solves nothing (pass rates 0 on both runs): the sampled lengths, compared above
  # with the other eval metrics, are what shows that every row drew the same random stream.
  evals = [r for r in case.train_records(str(tmp_path / "one" / "run")) if r["kind"] == "eval"]
  assert any(0 < r["response_len_sampled"] < 12 for r in evals), evals


@pytest.mark.parametrize(("num", "ok"), [(5, False), (6, True), (65, False), (66, True)])
def test_eval_problems_that_do_not_split_over_processes_are_refused(monkeypatch, num, ok):
  from postrain.train import _mesh_context

  cfg = case.config((("eval.num_problems", num),), data=1, tensor=-1)
  monkeypatch.setattr(_mesh_context.jax, "process_count", lambda: 2)
  if ok:
    _mesh_context.mesh_context(cfg)
    return
  with pytest.raises(ValueError, match=re.escape("config.eval.num_problems: ") + ".* 2 processes"):
    _mesh_context.mesh_context(cfg)


def test_mopd_groups_of_one_process_with_the_global_seed_equal_the_whole_batch():
  """The per-process step seeds its groups with `seed + first global group index`: process p's
  teacher prompts are then rows of the one-process batch's (the random peer order included)."""
  from postrain import tasks

  g, groups = 4, 6
  rng = np.random.default_rng(0)
  questions = [f"q{i}" for i in range(groups)]
  texts = [f"answer {i}" for i in range(groups * g)]
  rewards = rng.integers(0, 2, groups * g).astype(float).tolist()
  kw = dict(group_size=g, mode="contrastive", max_peers=2, max_failures=1, order="random")
  whole = tasks.mopd.build_batch_teacher_prompts(questions, texts, rewards, seed=11, **kw)
  for a, b in ((0, 3), (3, 6), (2, 5)):
    rows = slice(a * g, b * g)
    part = tasks.mopd.build_batch_teacher_prompts(
      questions[a:b], texts[rows], rewards[rows], seed=11 + a, **kw
    )
    assert part == whole[rows], (a, b)
  # Without the offset, a later share would draw another peer order somewhere.
  shifted = tasks.mopd.build_batch_teacher_prompts(
    questions[3:], texts[3 * g :], rewards[3 * g :], seed=11, **kw
  )
  assert shifted != whole[3 * g :]


def test_teacher_layout_pads_a_share_to_the_longest_prompt_of_the_batch():
  from postrain.train import _distill

  prompts = [[1, 2, 3], [4] * 40, [5], [6, 7]]  # the longest (40) is in the other "process"
  response = np.arange(8, dtype=np.int32).reshape(4, 2) + 100
  rvalid = np.ones((4, 2), bool)
  whole = _distill.teacher_layout(prompts, response, rvalid, pad_id=0)
  share = _distill.teacher_layout(prompts[2:], response[2:], rvalid[2:], pad_id=0, longest=40)
  alone = _distill.teacher_layout(prompts[2:], response[2:], rvalid[2:], pad_id=0)
  assert whole[0].shape == (4, 64 + 2) and alone[0].shape == (2, 32 + 2)
  for a, b in zip(share, whole):
    np.testing.assert_array_equal(a, b[2:])
