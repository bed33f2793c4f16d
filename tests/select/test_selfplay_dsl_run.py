"""The runnable DSL self-play loop: formats, seed tasks, gate on/off, an end-to-end run."""

import json
import os

import numpy as np
import pytest
from selectutil import REPO

from postrain import selfplay as sp
from postrain.tasks import selfplay
from postrain.train.config import load_config_file

CONFIG = os.path.join(REPO, "configs", "selfplay_dsl.py")


def test_seed_tasks_are_admitted_distinct_and_labelled_by_the_interpreter():
  seeds = sp.seed_tasks(30, seed=3)
  assert len({(t.program, t.inputs) for t in seeds}) == 30
  for t in seeds:
    assert selfplay.dsl_gate(t.program, t.inputs).admitted
    assert t.output == selfplay.run_dsl(t.program, t.inputs)
    assert t.program != "x"
  assert sp.seed_tasks(5, seed=3) == seeds[:5]  # deterministic in the seed


def test_proposal_and_answer_parsing():
  assert sp.parse_proposal(" (add (len x) 3)\ninput: [4 5]") == ("(add (len x) 3)", "[4 5]")
  assert sp.parse_proposal(" x\ninput: 5\n") == ("x", "5")
  assert sp.parse_proposal("(add x 1)") is None  # no input line
  assert sp.parse_proposal("") is None
  assert sp.canonical_answer(" [1, 2,3]\nrest") == "[1 2 3]"
  assert sp.canonical_answer(" -7") == "-7"
  assert sp.canonical_answer(" seven") is None
  assert sp.canonical_answer(None) is None


def test_prompts_round_trip_through_parsing():
  t = sp.seed_tasks(3, seed=0)
  prompt = sp.proposer_prompt(t[:2])
  assert prompt.endswith("program:")
  completion = f" {t[2].program}\ninput: {t[2].inputs}"
  assert sp.parse_proposal(completion) == (t[2].program, t[2].inputs)
  assert sp.solver_prompt(t[0]).endswith("output:")


def test_gate_on_and_off():
  parsed = [("(add x 1)", "4"), ("(div x 0)", "4"), ("(sum x", "[1 2]"), None, ("(sum x)", "[5 6]")]
  idx, verdicts = sp.gate_proposals(parsed, mode="strict")
  assert idx == [0, 1, 2, 4]
  assert [v.admitted for v in verdicts] == [True, False, False, True]
  assert verdicts[0].output == "5" and verdicts[3].output == "11"
  idx, verdicts = sp.gate_proposals(parsed, mode="off")
  assert idx == [0, 1, 2, 4] and all(v.admitted for v in verdicts)
  assert [v.leaked for v in verdicts] == [False, True, True, False]
  assert verdicts[1].output is None and verdicts[1].reason == "eval_error"
  # Leak rate: about ε of the rejected tasks get in (binomial, 4 sigma).
  rng = np.random.default_rng(0)
  bad = [("(div x 0)", "1")] * 2000
  _, verdicts = sp.gate_proposals(bad, mode="strict", leak_rate=0.25, rng=rng)
  frac = np.mean([v.admitted for v in verdicts])
  assert abs(frac - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 2000)


@pytest.mark.parametrize(
  ("key", "value"), [("gate.mode", "leaky"), ("solver_reward", "oracle"), ("proposals", 5)]
)
def test_bad_config(key, value):
  c = load_config_file(CONFIG, "scale=test")
  node, *_ = key.split(".")
  if "." in key:
    c[node][key.split(".")[1]] = value
  else:
    c[key] = value
  with pytest.raises(ValueError, match=key.split(".")[-1]):
    sp.validate(c)


@pytest.mark.slow
@pytest.mark.parametrize("gate", ["strict", "off"])
def test_end_to_end_run_writes_metrics(tmp_path, gate):
  c = load_config_file(CONFIG, f"scale=test,gate={gate}")
  report = sp.run(c, str(tmp_path))
  assert [e["step"] for e in report["evals"]] == [0, 1, 2]
  with open(tmp_path / "metrics.jsonl") as f:
    recs = [json.loads(line) for line in f]
  train = [r for r in recs if r["kind"] == "train"]
  assert [r["step"] for r in train] == [1, 2]
  for r in train:
    for key in ("admit/admitted_fraction", "pool/size", "pool/unique_output_rate", "solver/gap"):
      assert r[key] is not None and np.isfinite(r[key])
    assert r["pool/size"] >= 24  # the seed pool
  assert os.listdir(tmp_path / "tensorboard")
  assert (tmp_path / "selfplay.png").exists()
  assert (tmp_path / "checkpoints" / "2").exists()


@pytest.mark.parametrize("name", ["select_hes.py", "selfplay_dsl.py"])
def test_entry_point_configs_build_validate_and_lock(name):

  from postrain import select

  path = os.path.join(REPO, "configs", name)
  c = load_config_file(path)
  if name.startswith("select"):
    c.checkpoint = "runs/x"  # required; everything else has a usable default
    select.validate(c)
  else:
    sp.validate(c)
  c.lock()
  with pytest.raises(AttributeError):
    c.not_a_key = 1
  assert f"--config configs/{name}" in open(path).read()


@pytest.mark.slow
def test_lora_selfplay_trains_only_adapters_and_loads_as_a_run(tmp_path):
  """config.model.lora (rank 4, NF4 base, dropout 0.1): the warm start and both roles' updates
  change only the adapters (the base is bit-identical), the checkpoint holds only adapters and the
  base's hash, and `train.load_run` gives base + adapters merged: the sampler's model."""
  import jax
  from flax import nnx

  from postrain import models, train

  c = load_config_file(CONFIG, "scale=test,solver=grounded")
  c.model.lora.rank, c.model.lora.alpha, c.model.lora.dropout = 4, 8.0, 0.1
  c.model.quantize = "nf4"
  run = sp.SelfPlay(c, str(tmp_path))
  paths = ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(run.params)]
  assert paths and all("_lora/lora_" in p for p in paths)
  assert any(x.dtype == jax.numpy.uint4 for x in jax.tree.leaves(run.rest))  # NF4 codes
  base = [np.asarray(x) for x in jax.tree.leaves(run.rest)]
  before = [np.asarray(x) for x in jax.tree.leaves(run.params)]
  report = run.run()
  assert [e["step"] for e in report["evals"]] == [0, 1, 2]
  for a, b in zip(jax.tree.leaves(run.rest), base):
    np.testing.assert_array_equal(np.asarray(a), b)
  after = [np.asarray(x) for x in jax.tree.leaves(run.params)]
  assert all(not np.array_equal(a, b) for a, b in zip(after, before))  # A and B of every adapter
  loaded = train.load_run(str(tmp_path))
  assert loaded.step == 2 and not models.has_lora(loaded.model)
  tokens = np.asarray([[3, 5, 7, 9, 11]], np.int32)
  want = models.forward(run._policy(run.params), tokens)
  np.testing.assert_allclose(models.forward(loaded.model, tokens), want, atol=1e-6)
  with open(tmp_path / "checkpoints" / "2" / "meta" / "metadata") as f:
    meta = json.load(f)
  assert meta["lora_base"]["quantize"] == "nf4" and len(meta["lora_base"]["sha256"]) == 64


def test_selfplay_bad_lora_config():
  c = load_config_file(CONFIG, "scale=test")
  c.model.quantize = "nf4"  # a quantised base needs adapters
  with pytest.raises(ValueError, match=r"config\.model\.quantize.*lora\.rank"):
    sp.validate(c)
