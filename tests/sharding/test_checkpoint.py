"""A checkpoint written under one mesh restores under another with identical values."""

import jax
import numpy as np
import sharding_case as case
from flax import nnx

from postrain import sharding
from postrain.train import _checkpoint


def test_restore_into_a_different_mesh(tmp_path):
  tx = case.optimizer()
  rules = sharding.default_rules()
  saved = sharding.init_sharded(case.factory, tx, sharding.make_mesh({"fsdp": 8}), rules)
  # Non-trivial optimiser state: Adam moments filled with distinct values, count = 3.
  opt_state = jax.tree.map(lambda x: x + 0.5 if x.dtype == np.float32 else x + 3, saved.opt_state)
  state = {"params": saved.params, "opt_state": opt_state}
  ckpt = _checkpoint.Checkpointer(str(tmp_path / "ckpt"), every=1, keep=1)
  assert ckpt.maybe_save(7, state, {"note": "fsdp8"}, force=True)
  ckpt.close()

  # The new mesh's shardings come from the rules alone (abstract model, nothing allocated).
  mesh = sharding.make_mesh({"data": 2, "tensor": 4})
  abstract = nnx.eval_shape(case.factory)
  _, abs_params, _ = nnx.split(abstract, nnx.Param, ...)
  p_sh = sharding.param_shardings(abs_params, mesh, rules)
  o_sh = sharding.opt_state_shardings(
    tx, jax.eval_shape(tx.init, abs_params), abs_params, p_sh, mesh
  )
  target = sharding.abstract_target(state, {"params": p_sh, "opt_state": o_sh})
  step, restored, meta = _checkpoint.Checkpointer(
    str(tmp_path / "ckpt"), every=1, keep=1
  ).restore_latest(target)
  assert step == 7 and meta == {"note": "fsdp8"}
  for new, old, s in zip(
    jax.tree.leaves(restored), jax.tree.leaves(state), jax.tree.leaves(target)
  ):
    np.testing.assert_array_equal(np.asarray(new), np.asarray(old))
    assert new.sharding.is_equivalent_to(s.sharding, new.ndim)
  emb = restored["params"]["embedding"].get_value()
  assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  assert emb.addressable_shards[0].data.shape == (512 // 4, 64)
