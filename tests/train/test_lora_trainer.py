"""LoRA / QLoRA through the Trainer (`config.model.lora`, `config.model.quantize`) at
`configs/default.py:scale=test` size: only adapters train, the frozen base is an argument of the
compiled update, the KL reference is the base with adapters off, checkpoints and their base."""

import jax
import numpy as np
import pytest
from flax import nnx
from trainutil import load_config

from postrain import models
from postrain.train._trainer import Trainer, build_model


def _config(rank=4, quantize="none", algorithm="gspo", **rl):
  c = load_config(f"scale=test,algorithm={algorithm}")
  c.model.lora.rank = rank
  c.model.lora.alpha = 8.0
  c.model.quantize = quantize
  c.sft.steps, c.rl.steps = 2, 2
  for k, v in rl.items():
    setattr(c.rl, k, v)
  return c


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _paths(state):
  return ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(state)]


def test_rl_step_trains_only_adapters_with_kl_zero_at_start(tmp_path):
  """The fast end-to-end check: one RL step (sample -> score -> update) with rank 4, nf4 base."""
  c = _config(quantize="nf4", kl_coef=0.5, updates_per_batch=1, entropy_coef=0.01)
  c.sft.steps, c.optimizer.warmup_steps = 0, 0  # the entropy term moves B even without reward
  tr = Trainer(c, str(tmp_path))
  # Trainable state: only adapter factors; optimiser state mirrors them (float32).
  assert _paths(tr.params) and all("_lora/lora_" in p for p in _paths(tr.params))
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(tr.params))
  n = len(jax.tree.leaves(tr.params))
  opt_shapes = [np.shape(x) for x in jax.tree.leaves(tr.opt_state)]
  assert sum(s != () for s in opt_shapes) == 2 * n  # Adam's mu and nu, nothing for the base
  # The frozen base travels as an argument of the compiled update (not a baked-in constant).
  lowered = tr.rl_update.lower(
    tr.abstract_state(tr.rl_tx),
    __import__("postrain.train._memory", fromlist=["x"]).abstract_rl_batch(c),
    jax.ShapeDtypeStruct((), np.float32),
  )
  arg_leaves = len(jax.tree.leaves(lowered.args_info))
  assert arg_leaves >= n + len(jax.tree.leaves(tr.rest))
  assert any(x.dtype == jax.numpy.uint4 for x in jax.tree.leaves(tr.rest))  # nf4 codes
  base_before = _leaves(tr.rest)
  # Copies: a numpy view of a CPU buffer would keep the compiled update from donating it.
  lora_before = [a.copy() for a in _leaves(tr.params)]
  tr._enter_rl()
  old = tr.state
  metrics = tr._rl_step()
  # The compiled update took the whole state, donated (adapters, optimiser state, key, step), and
  # the frozen base as a separate argument: the base's buffers are alive, the old state's are not.
  alive = [
    (jax.tree_util.keystr(k), x.shape, x.dtype, x.sharding)
    for k, x in jax.tree_util.tree_flatten_with_path(old)[0]
    if not x.is_deleted()
  ]
  assert not alive, alive
  assert not any(x.is_deleted() for x in jax.tree.leaves(tr.rest))
  assert int(tr.state.step) == 0  # the loop, not the step, advances it
  # Step 0: B = 0, so the policy is the base and the KL to the adapter-free base is 0.
  assert abs(metrics["kl_ref"]) < 1e-6, metrics["kl_ref"]
  assert np.isfinite(metrics["loss"])
  for a, b in zip(_leaves(tr.rest), base_before):
    np.testing.assert_array_equal(a, b)  # the base is bit-identical
  changed = [not np.array_equal(a, b) for a, b in zip(_leaves(tr.params), lora_before)]
  assert any(changed)


def test_bad_lora_config_fails_before_compiling(tmp_path):
  c = _config(rank=0, quantize="nf4")
  with pytest.raises(ValueError, match=r"config\.model\.quantize.*lora\.rank"):
    Trainer(c, str(tmp_path / "a"))
  c = _config(rank=20)  # q: [32 -> 2 * 16], k: [32 -> 1 * 16]
  with pytest.raises(ValueError, match=r"config\.model\.lora\.rank: 20 .*attn/k"):
    Trainer(c, str(tmp_path / "b"))
  c = _config()
  c.model.lora.targets = (r"attn/q$", r"attn/x$")
  with pytest.raises(ValueError, match=r"config\.model\.lora\.targets.*attn/x"):
    Trainer(c, str(tmp_path / "c"))
  c = _config()
  c.model.lora.dropout = 1.0
  with pytest.raises(ValueError, match=r"config\.model\.lora\.dropout.*\[0, 1\)"):
    Trainer(c, str(tmp_path / "d"))
  c = _config(rank=0)
  c.model.lora.dropout = 0.1
  with pytest.raises(ValueError, match=r"config\.model\.lora\.dropout.*lora\.rank > 0"):
    Trainer(c, str(tmp_path / "e"))


@pytest.mark.slow
def _resume_equals_straight(c, tmp_path) -> Trainer:
  """4 steps straight vs 3 steps, a new Trainer, the 4th step: adapters and AdamW state equal bit
  for bit. Returns the resumed trainer."""
  full = Trainer(c, str(tmp_path / "full"))
  full.run()
  part = Trainer(c, str(tmp_path / "part"))
  part.total_steps = 3  # stop after step 3 (checkpointed: every 2 steps and at the end)
  part.run()
  resumed = Trainer(c, str(tmp_path / "part"))
  resumed.run()
  assert resumed.step == full.step == 4
  for a, b in zip(_leaves(resumed.params), _leaves(full.params)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(_leaves(resumed.opt_state), _leaves(full.opt_state)):
    np.testing.assert_array_equal(a, b)
  return resumed


def test_resume_is_exact_and_refuses_another_base(tmp_path):
  """SFT then RL (GRPO, KL on): 4 steps straight vs 3 steps, a new Trainer, the 4th step."""
  c = _config(algorithm="grpo", kl_coef=0.1)
  resumed = _resume_equals_straight(c, tmp_path)
  # The checkpoint holds only the adapters (+ optimiser state), and a pointer to the base.
  meta = resumed.checkpointer.restore_latest(
    __import__("postrain.train._checkpoint", fromlist=["x"]).abstract_like(resumed._state())
  )[2]
  assert meta["lora_base"]["sha256"] == models.base_sha256(
    build_model(c, resumed.data.tokenizer.vocab_size, seed=c.seed)
  )
  # `load_run` (select, generate): the base + the checkpoint's adapters, merged.
  from postrain.train import load_run

  run = load_run(str(tmp_path / "part"))
  tokens = np.asarray([[1, 2, 3, 4, 5]], np.int32)
  want = models.forward(resumed.sampling_model(resumed.params), tokens)
  np.testing.assert_allclose(models.forward(run.model, tokens), want, atol=1e-6)
  assert not models.has_lora(run.model) and run.step == 4
  # Another base (same config, other weights) is refused with a clear error.
  other = build_model(c, resumed.data.tokenizer.vocab_size, seed=c.seed + 1)
  with pytest.raises(ValueError, match=r"config\.model: the LoRA checkpoint .* SHA-256 differ"):
    Trainer(c, str(tmp_path / "part"), model=other).run()
  with pytest.raises(ValueError, match=r"run: the LoRA run .* not on the `base` given"):
    load_run(str(tmp_path / "part"), base=other, what="run")


def test_load_run_of_lora_over_a_given_base(tmp_path):
  """A LoRA run over a model passed to the Trainer (e.g. an SFT run's): `load_run` refuses the
  base its config would build (not the one trained on) and merges onto the `base` given."""
  from postrain.train import load_run

  c = _config()
  c.rl.steps = 0
  given = build_model(c, 256, seed=c.seed + 7)  # the test tokenizer's vocabulary (checked below)
  tr = Trainer(c, str(tmp_path / "run"), model=given)
  assert tr.data.tokenizer.vocab_size == 256
  tr.run()
  with pytest.raises(
    ValueError, match=r"not on the base its config builds .* `load_run\(\.\.\., base=\)`"
  ):
    load_run(str(tmp_path / "run"))
  run = load_run(str(tmp_path / "run"), base=given)
  tokens = np.asarray([[1, 2, 3, 4, 5]], np.int32)
  want = models.forward(tr.sampling_model(tr.params), tokens)
  np.testing.assert_allclose(models.forward(run.model, tokens), want, atol=1e-6)
  assert models.has_lora(given) is False  # the caller's model is left alone


@pytest.mark.slow
@pytest.mark.parametrize(
  "mode,algorithm,quantize",
  [("sft", "gspo", "none"), ("rl", "gspo", "int8"), ("rl", "grpo", "nf4"), ("opd", "gspo", "none")],
)
def test_modes_run_with_lora(tmp_path, mode, algorithm, quantize):
  c = _config(quantize=quantize, algorithm=algorithm, kl_coef=0.1 if mode == "rl" else 0.0)
  c.mode = mode
  if mode == "opd":  # the EMA teacher: base + the adapters' moving average
    c.teacher.source = "ema"
  tr = Trainer(c, str(tmp_path))
  base = _leaves(tr.rest)
  report = tr.run()
  assert report["final"]["step"] == tr.total_steps
  for a, b in zip(_leaves(tr.rest), base):
    np.testing.assert_array_equal(a, b)
  b_norm = sum(float(np.abs(np.asarray(x)).sum()) for p, x in nnx.to_flat_state(tr.params)
               if p[-1] == "lora_b")  # fmt: skip
  assert b_norm > 0


@pytest.mark.slow
def test_dropout_resume_is_exact(tmp_path):
  """Adapter dropout 0.2 (SFT then GRPO, two micro-batches per update): 4 steps straight equal 3
  steps + a new Trainer's 4th bit for bit (the masks are a function of the run's key and the
  checkpointed optimiser step), and differ from the same run without dropout."""
  c = _config(algorithm="grpo", kl_coef=0.1)
  c.model.lora.dropout = 0.2
  c.sft.microbatch_rows, c.rl.microbatch_rows = 4, 4
  resumed = _resume_equals_straight(c, tmp_path)  # its params are the straight run's, bit for bit
  c.model.lora.dropout = 0.0
  plain = Trainer(c, str(tmp_path / "plain"))
  plain.run()
  diff = max(
    float(np.abs(a - b).max()) for a, b in zip(_leaves(plain.params), _leaves(resumed.params))
  )
  assert diff > 1e-6, diff
