"""LoRA on a mesh: adapter parameters and a quantised (int8 / NF4) frozen base get partition rules
(the rank dimension replicated), and the adapters-only RL update (the base an argument) on 8 CPU
devices equals the one-device update."""

import functools

import jax
import numpy as np
import pytest
import sharding_case as case
from flax import nnx

from postrain import models, sharding
from postrain.train import _update

MESHES = [{"fsdp": 8}, {"data": 2, "fsdp": 2, "tensor": 2}]
# Embed 128: NF4 blocks of 64 give 2 scale blocks per column, which fsdp=8 does not divide (their
# dimension is replicated), fsdp=2 does.
CFG = models.get_config("tiny", num_kv_heads=4, embed_dim=128, head_dim=32)


def _model(quantize):
  model = models.Decoder(CFG, rngs=nnx.Rngs(0))
  models.add_lora(model, rank=4, alpha=8.0, seed=1)
  key = jax.random.key(3)
  for i, a in enumerate(models.lora_adapters(model).values()):  # B != 0: A gets gradients too
    a.lora_b.set_value(0.05 * jax.random.normal(jax.random.fold_in(key, i), a.lora_b.shape))
  models.quantize_base(model, quantize)
  graphdef, lora, base, rest = nnx.split(model, nnx.LoRAParam, nnx.Param, ...)
  return graphdef, lora, nnx.merge_state(base, rest)


def _update_fn(graphdef, tx):
  return _update.make_update(functools.partial(_update.rl_loss, spec=case.SPEC), tx, graphdef, None)


def _batch(step, graphdef, lora, frozen):
  x = case.inputs(step)
  fn = _update.make_logprob_fn(graphdef, None, "naive")
  return case.batch(step, np.asarray(fn((lora, frozen), x["tokens"], x["mask"], x["valid"])))


@pytest.mark.parametrize("quantize", ["none", "nf4"])
@pytest.mark.parametrize(
  "mesh_cfg", MESHES, ids=lambda m: "-".join(f"{k}{v}" for k, v in m.items())
)
def test_lora_update_on_8_devices_matches_one(mesh_cfg, quantize):
  assert jax.device_count() == 8
  graphdef, lora, frozen = _model(quantize)
  tx = case.optimizer()
  # One device.
  update = _update_fn(graphdef, tx)
  ref_lora, ref_opt = lora, tx.init(lora)
  ref = []
  for step in range(2):
    b = _batch(step, graphdef, ref_lora, frozen)
    ref_lora, ref_opt, aux = update(ref_lora, ref_opt, frozen, b, case.margin())
    ref.append((float(aux["loss"]), jax.device_get(ref_lora)))
  # The mesh: rules for every adapter and quantised leaf.
  mesh = sharding.make_mesh(mesh_cfg)
  rules = sharding.default_rules()
  l_sh = sharding.param_shardings(lora, mesh, rules)
  f_sh = sharding.param_shardings(frozen, mesh, rules)
  for path, s in nnx.to_flat_state(l_sh):
    spec = s.get_value().spec
    rank_dim = 1 if path[-1] == "lora_a" else 0
    assert len(spec) == 2 and spec[rank_dim] is None, (path, spec)
  specs = [s.spec for s in jax.tree.leaves(f_sh)]
  if mesh_cfg.get("fsdp") == 8:
    assert any("fsdp" in str(sp) for sp in specs)  # the base is split, not replicated
  placed_lora = sharding.place_params(jax.device_get(lora), l_sh)
  placed_frozen = sharding.place_params(jax.device_get(frozen), f_sh)
  for x, s in zip(jax.tree.leaves(placed_frozen), jax.tree.leaves(f_sh)):
    assert x.sharding.is_equivalent_to(s, x.ndim)
  o_sh = sharding.opt_state_shardings(tx, jax.eval_shape(tx.init, lora), lora, l_sh, mesh)
  bsh = sharding.batch_sharding(mesh)
  sharded = sharding.shard_update(_update_fn(graphdef, tx), l_sh, o_sh, bsh, rest_shardings=f_sh)
  params = placed_lora
  opt_state = jax.jit(tx.init, out_shardings=o_sh)(params)
  for step in range(2):
    b = _batch(step, graphdef, jax.device_get(params), frozen)
    params, opt_state, aux = sharded(params, opt_state, b, case.margin(), rest=placed_frozen)
    loss, want = ref[step]
    np.testing.assert_allclose(float(aux["loss"]), loss, rtol=1e-5, atol=1e-6)
    for x, y in zip(jax.tree.leaves(jax.device_get(params)), jax.tree.leaves(want)):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)


# -- a LoRA run's checkpoint restored onto another mesh ---------------------------------------------

# The trainer mesh tests' run (`trainer_case`: SFT 2 + RL 3 steps, KL on) with rank-4 adapters on an
# NF4 base: its checkpoints hold only the adapters and their Adam state.
LORA_OVERRIDES = (
  ("model.lora.rank", 4),
  ("model.lora.alpha", 8.0),
  ("model.quantize", "nf4"),
)


@pytest.mark.slow
def test_lora_checkpoint_resumes_on_another_mesh_and_on_one_device(tmp_path):
  """fsdp=8 writes checkpoints 2, 4, 5; from step 4 the run resumes (a) in this process on
  data2-fsdp2-tensor2 and (b) in a one-device CLI process, and its last step, metrics and final
  adapters / Adam state equal the uninterrupted fsdp=8 run's (float32 reduction-order noise)."""
  import os
  import shutil

  import trainer_case as tcase

  from postrain import train

  overrides = tcase.OVERRIDES + LORA_OVERRIDES
  first = str(tmp_path / "fsdp8")
  trainer = train.Trainer(tcase.config(overrides, fsdp=8), first)
  trainer.run()
  assert dict(trainer.mesh.mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(trainer.rest))
  assert tcase.checkpoint_steps(first) == [2, 4, 5]
  final = tcase.restore_numpy(first, 5)
  assert set(final) == {"params", "opt_state"}  # no copy of the base or of a KL reference
  assert all("_lora" in k for k in tcase.flat(final["params"]))

  def resumable(name):
    workdir = str(tmp_path / name)
    shutil.copytree(first, workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "5"))  # resume from step 4 (RL state)
    return workdir

  # (a) Another mesh in this process: the restored state equals the checkpoint, in the new shards.
  second = resumable("mesh222")
  new = train.Trainer(tcase.config(overrides, data=2, fsdp=2, tensor=2), second)
  new._restore()
  assert new.step == 4
  saved = tcase.restore_numpy(second, 4)
  got = tcase.flat(jax.device_get(new._state()))
  for key, value in tcase.flat(saved).items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)
  for x, s in zip(jax.tree.leaves(new.params), jax.tree.leaves(new.param_shardings)):
    assert x.sharding.is_equivalent_to(s, x.ndim)
    assert dict(x.sharding.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  new.run()
  assert tcase.checkpoint_steps(second) == [2, 4, 5]
  tcase.assert_records_close(tcase.train_records(second), tcase.train_records(first))
  tcase.assert_trees_close(jax.device_get(new.params), final["params"], "adapters (mesh222)")
  tcase.assert_trees_close(jax.device_get(new.opt_state), final["opt_state"], "Adam (mesh222)")

  # (b) One device: the CLI in a one-device process resumes the fsdp=8 checkpoint.
  third = resumable("one_device")
  tcase.run_one_device(third, overrides)
  assert tcase.checkpoint_steps(third) == [2, 4, 5]
  tcase.assert_records_close(tcase.train_records(third), tcase.train_records(first))
  one = tcase.restore_numpy(third, 5)
  tcase.assert_trees_close(one["params"], final["params"], "adapters (one device)")
  tcase.assert_trees_close(one["opt_state"], final["opt_state"], "Adam (one device)")
