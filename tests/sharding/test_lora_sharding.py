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
