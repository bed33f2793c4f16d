"""Activation sharding constraints in the model: present in the lowered train step and log-prob
function under a (data=2, tensor=4) mesh with the rules' specs, absent without the context, and
harmless for a batch the mesh does not divide."""

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sharding_case as case
from flax import nnx

from postrain import models, sharding

L = case.CFG.num_layers
B, T = case.BATCH, case.LENGTH
D, N, K, H = case.CFG.embed_dim, case.CFG.num_heads, case.CFG.num_kv_heads, case.CFG.head_dim
F, V = case.CFG.mlp_dim, case.CFG.vocab_size
BATCH = '{"data", "fsdp"}'  # the logical "batch" axis: data x fsdp (fsdp has size 1 here)

# (type, spec) of each named activation -> how often the forward pass constrains it.
EXPECTED = {
  (f"{B}x{T}x{D}xf32", f"[{BATCH}, {{}}, {{}}]"): L + 1,  # residual stream: embedding, blocks
  (f"{B}x{T}x{N}x{H}xf32", f'[{BATCH}, {{}}, {{"tensor"}}, {{}}]'): 3 * L,  # q, k, v (K == N)
  (f"{B}x{T}x{F}xf32", f'[{BATCH}, {{}}, {{"tensor"}}]'): L,  # MLP hidden
  (f"{B * (T - 1)}x{V}xf32", f'[{BATCH}, {{"tensor"}}]'): 1,  # logits of the naive log-probs
}
_CONSTRAINT = re.compile(r"sdy\.sharding_constraint %\S+ <@\w+, (\[.*\])> : tensor<([^>]+)>")


def _constraints(hlo: str) -> collections.Counter:
  return collections.Counter((t, spec) for spec, t in _CONSTRAINT.findall(hlo))


@pytest.fixture(scope="module")
def sharded():
  if jax.device_count() < 8:  # this process cannot host the mesh: conftest runs the tests in an
    return None  # 8-device child process, which builds its own fixtures
  assert K == N  # q, k and v share one shape in EXPECTED
  assert jax.config.jax_use_shardy_partitioner  # the constraints below are Shardy's text
  mesh = sharding.make_mesh({"data": 2, "tensor": 4})
  tx = case.optimizer()
  state = sharding.init_sharded(case.factory, tx, mesh, sharding.default_rules())
  return mesh, tx, state, sharding.batch_sharding(mesh)


def test_logprob_fn_constrains_named_activations(sharded):
  _, _, state, bsh = sharded
  fn = case.logprob_fn(state.graphdef, state.rest)
  x = case.inputs(0)
  lowered = sharding.shard_logprob_fn(fn, state.param_shardings, bsh).lower(
    state.params, x["tokens"], x["mask"], x["valid"]
  )
  found = _constraints(lowered.as_text())
  assert found == collections.Counter(EXPECTED), found
  # The same function lowered without `activation_sharding`: no constraint at all.
  plain = jax.jit(fn).lower(state.params, x["tokens"], x["mask"], x["valid"]).as_text()
  assert "sharding_constraint" not in plain and "@Sharding" not in plain


def test_train_step_constrains_named_activations(sharded):
  _, tx, state, bsh = sharded
  update_fn = case.rl_update(state.graphdef, state.rest, tx)
  b = case.batch(0, np.zeros((B, T), np.float32))
  update = sharding.shard_update(update_fn, state.param_shardings, state.opt_shardings, bsh)
  found = _constraints(update.lower(state.params, state.opt_state, b, case.margin()).as_text())
  for key, count in EXPECTED.items():  # forward (and their transposes in the backward pass)
    assert found[key] >= count, (key, found)
  plain = jax.jit(update_fn).lower(state.params, state.opt_state, b, case.margin()).as_text()
  assert "sharding_constraint" not in plain and "@Sharding" not in plain


def test_user_rules_move_the_constraints(sharded):
  """`embed_act` over tensor (MaxText's sequence-parallel-like residual): the rule reaches the
  model; rules without the activation names (older configs) leave those dimensions alone."""
  _, _, state, bsh = sharded
  fn = case.logprob_fn(state.graphdef, state.rest)
  x = case.inputs(0)
  rules = [r for r in sharding.default_logical_axis_rules() if r[0] != "embed_act"]
  lowered = sharding.shard_logprob_fn(
    fn, state.param_shardings, bsh, logical_rules=[*rules, ("embed_act", "tensor")]
  ).lower(state.params, x["tokens"], x["mask"], x["valid"])
  found = _constraints(lowered.as_text())
  assert found[(f"{B}x{T}x{D}xf32", f'[{BATCH}, {{}}, {{"tensor"}}]')] == L + 1
  old = [r for r in rules if not r[0].endswith("_act")]
  lowered = sharding.shard_logprob_fn(fn, state.param_shardings, bsh, logical_rules=old).lower(
    state.params, x["tokens"], x["mask"], x["valid"]
  )
  found = _constraints(lowered.as_text())
  assert found[(f"{B}x{T}x{F}xf32", f"[{BATCH}, {{}}, {{}}]")] == L  # mlp_act unknown: free


def test_odd_batch_is_left_unconstrained_and_values_match(sharded):
  """3 rows do not split over data=2: the batch dimension stays free, heads are still split, and
  the log-probs equal the unconstrained forward's."""
  mesh, _, state, _ = sharded
  fn = case.logprob_fn(state.graphdef, state.rest)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, V, (3, T)), jnp.int32)
  mask = jnp.ones((3, T), jnp.float32)
  valid = jnp.ones((3, T), bool).at[0, :4].set(False)
  jitted = jax.jit(fn.__wrapped__)  # its own trace (fn's jit cache ignores the context)
  with sharding.activation_sharding(mesh):
    hlo = jitted.lower(state.params, tokens, mask, valid).as_text()
    got = jitted(state.params, tokens, mask, valid)
  found = _constraints(hlo)
  assert found[(f"3x{T}x{N}x{H}xf32", '[{}, {}, {"tensor"}, {}]')] == 3 * L
  assert found[(f"3x{T}x{F}xf32", '[{}, {}, {"tensor"}]')] == L
  ref = nnx.merge(state.graphdef, jax.device_get(state.params), state.rest)
  want = models.logprobs(ref, tokens, mask, valid=valid)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
