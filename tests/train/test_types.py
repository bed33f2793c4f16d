"""The trainer's pytrees: `RLBatch` passes through jit / tree.map whole, names bad keys; the
`TrainState` goes whole through a jitted update, its step a device scalar."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from postrain.train import RLBatch, TrainState


def _batch(b=4, t=3):
  f = jnp.ones((b, t), jnp.float32)
  return dict(
    tokens=jnp.zeros((b, t), jnp.int32),
    valid=jnp.ones((b, t), bool),
    mask=f,
    loss_mask=f,
    old_logp=-f,
    advantages=jnp.arange(b, dtype=jnp.float32),
    rewards=jnp.zeros((b,), jnp.float32),
  )


def test_rl_batch_is_a_pytree_with_optional_fields_empty():
  batch = RLBatch.of(_batch())
  assert len(jax.tree.leaves(batch)) == 7  # ref_logp, sampler_logp, is_weights None: no leaves
  doubled = jax.jit(lambda x: jax.tree.map(lambda a: a * 2, x))(batch)
  assert isinstance(doubled, RLBatch) and doubled.ref_logp is None
  np.testing.assert_array_equal(doubled.advantages, [0, 2, 4, 6])
  with_ref = batch.replace(ref_logp=batch.old_logp)
  assert set(with_ref.fields()) == set(_batch()) | {"ref_logp"}


def test_rl_batch_of_names_unknown_and_missing_keys():
  bad = dict(_batch(), extra=1)
  del bad["rewards"]
  with pytest.raises(ValueError, match=r"unknown keys \['extra'\], missing keys \['rewards'\]"):
    RLBatch.of(bad)


def test_train_state_is_one_pytree_through_a_donated_jit():
  """The whole state (step included) goes through the jitted update and comes back; the update
  leaves `step`, `advance` counts one trainer step; an EMA teacher is a field of its own."""
  state = TrainState.create(
    params={"w": jnp.ones(2)}, opt_state=jnp.int32(0), rng=jax.random.key(0)
  )
  assert state.step.dtype == jnp.int32 and int(state.step) == 0 and state.teacher is None
  assert len(jax.tree.leaves(state)) == 4  # params, opt_state, rng, step (teacher None: empty)

  def update(state, batch, scale):
    params = jax.tree.map(lambda p: p - scale * batch, state.params)
    return state.replace(params=params, opt_state=state.opt_state + 1), {"n": state.opt_state}

  jitted = jax.jit(update, donate_argnums=0)
  new, aux = jitted(state, jnp.float32(0.5), 2.0)
  np.testing.assert_array_equal(new.params["w"], [0.0, 0.0])
  assert int(new.opt_state) == 1 and int(aux["n"]) == 0 and int(new.step) == 0
  new, _ = jitted(new, jnp.float32(0.5), 2.0)
  assert int(new.opt_state) == 2 and int(new.step) == 0
  assert int(new.advance().advance().step) == 2
  with_teacher = new.replace(teacher={"w": jnp.zeros(2)})
  assert len(jax.tree.leaves(with_teacher)) == 5
