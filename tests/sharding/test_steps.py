"""The RL update and the log-prob function under sharded meshes equal the unsharded ones."""

from typing import ClassVar

import jax
import numpy as np
import pytest
import sharding_case as case
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from postrain import sharding

MESHES = [
  {"data": 8},
  {"fsdp": 8},
  {"data": 2, "fsdp": 2, "tensor": 2},
  {"tensor": 4, "data": 2},
]


def _close(actual, expected, what, tol=1e-5):
  a, e = jax.tree.leaves(jax.device_get(actual)), jax.tree.leaves(expected)
  assert len(a) == len(e), what
  for x, y in zip(a, e):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol, err_msg=what)


@pytest.mark.parametrize(
  "mesh_cfg", MESHES, ids=lambda m: "-".join(f"{k}{v}" for k, v in m.items())
)
def test_rl_update_matches_unsharded(mesh_cfg):
  ref = case.reference()
  mesh = sharding.make_mesh(mesh_cfg)
  tx = case.optimizer()
  state = sharding.init_sharded(case.factory, tx, mesh, sharding.default_rules())
  # Created in place: every parameter and Adam moment already has its rule's sharding.
  for x, s in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.param_shardings)):
    assert x.sharding.is_equivalent_to(s, x.ndim)
  _close(state.params, ref["init"], "initial params")  # partitionable RNG: same values

  bsh = sharding.batch_sharding(mesh)
  update = sharding.shard_update(
    case.rl_update(state.graphdef, state.rest, tx), state.param_shardings, state.opt_shardings, bsh
  )
  logprobs = sharding.shard_logprob_fn(
    case.logprob_fn(state.graphdef, state.rest), state.param_shardings, bsh
  )
  params, opt_state = state.params, state.opt_state
  for step in range(2):
    x = case.inputs(step)
    logp = logprobs(params, x["tokens"], x["mask"], x["valid"])
    assert logp.sharding.is_equivalent_to(bsh, 2)
    params, opt_state, aux = update(
      params, opt_state, case.batch(step, np.asarray(logp)), case.margin()
    )
    loss, grad_norm, ref_params, ref_opt = ref["steps"][step]
    np.testing.assert_allclose(float(aux["loss"]), loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(aux["grad_norm"]), grad_norm, rtol=1e-5)
    _close(params, ref_params, f"params after step {step + 1}")
    _close(opt_state, ref_opt, f"optimizer state after step {step + 1}")
  for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(state.param_shardings)):
    assert x.sharding.is_equivalent_to(s, x.ndim)
  for x, s in zip(jax.tree.leaves(opt_state), jax.tree.leaves(state.opt_shardings)):
    assert x.sharding.is_equivalent_to(s, x.ndim)


def test_batch_not_divisible_by_batch_axes_is_a_value_error():
  mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
  bsh = sharding.batch_sharding(mesh)
  update = sharding.shard_update(lambda p, o, b: (p, o, {}), None, None, bsh)
  with pytest.raises(ValueError, match=r"`batch\['tokens'\]` \(shape \(6, 3\)\).*size 8"):
    update(None, None, {"tokens": np.zeros((6, 3), np.int32)})


def test_place_params_copies_shard_by_shard():
  mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
  rng = np.random.default_rng(0)
  host = {
    "embedding": rng.normal(size=(16, 8)).astype(np.float32),
    "scale": np.arange(8.0, dtype=np.float32),
  }
  shardings = {
    "embedding": NamedSharding(mesh, P("tensor", "fsdp")),
    "scale": NamedSharding(mesh, P()),
  }

  class Spy(np.ndarray):
    """Records the shape of every slice read from the host array."""

    reads: ClassVar[list] = []

    def __getitem__(self, idx):
      out = np.asarray(super().__getitem__(idx))
      Spy.reads.append(out.shape)
      return out

  host_spy = dict(host, embedding=host["embedding"].view(Spy))
  placed = sharding.place_params(host_spy, shardings)
  assert placed["embedding"].sharding == shardings["embedding"]
  np.testing.assert_array_equal(np.asarray(placed["embedding"]), host["embedding"])
  np.testing.assert_array_equal(np.asarray(placed["scale"]), host["scale"])
  # 8 devices each read one (8, 2) shard, never the whole (16, 8) tensor.
  assert Spy.reads and all(shape == (8, 2) for shape in Spy.reads), Spy.reads
  for shard in placed["embedding"].addressable_shards:
    np.testing.assert_array_equal(np.asarray(shard.data), host["embedding"][shard.index])
  with pytest.raises(ValueError):
    sharding.place_params({"w": np.zeros((3, 8), np.float32)}, {"w": shardings["embedding"]})
