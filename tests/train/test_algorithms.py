"""The algorithm registry: every built-in loss and advantage estimator is chosen by config, and a
user's loss from their own module runs end to end (`rl.algorithm="module:function"`)."""

import types

import golden
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trainutil import load_config

from postrain import losses
from postrain.train import algorithms
from postrain.train import config as config_lib


def ppo_token_loss(logp, old_logp, advantages, mask, *, eps_low, eps_high, agg, tag=0.0):
  """A user's loss: GRPO's token-level PPO clip, written outside postrain, with one aux of its
  own (`user_tag`, the keyword argument it was given)."""
  loss, aux = losses.ppo_clip(
    logp, old_logp, advantages, mask, eps_low=eps_low, eps_high=eps_high, level="token", agg=agg
  )
  return loss, dict(aux, user_tag=jnp.asarray(tag, jnp.float32))


GRPO_KWARGS = {"eps_low": 0.2, "eps_high": 0.2, "agg": "seq_mean_token_mean", "tag": 7.0}


def _validated(**rl):
  c = load_config()
  c.rl.update(rl)
  config_lib.validate(c)
  return c


@pytest.mark.parametrize("name", sorted(algorithms.REGISTRY))
def test_every_algorithm_is_selectable_with_its_defaults(name):
  c = config_lib.set_algorithm(load_config(), name)
  config_lib.validate(c)
  entry = algorithms.REGISTRY[name]
  for key, value in entry.defaults.items():
    assert c.rl[key] == value, (name, key)
  assert dict(algorithms.loss_kwargs(c.rl)) == dict(entry.section)


@pytest.mark.parametrize("name", sorted(algorithms.REGISTRY))
def test_every_registered_loss_runs_on_a_batch(name):
  rng = np.random.default_rng(0)
  b, t = 8, 6
  logp = jnp.asarray(rng.uniform(-3, -0.1, (b, t)), jnp.float32)
  batch = types.SimpleNamespace(  # the fields of an RLBatch a policy loss reads
    old_logp=logp + jnp.asarray(rng.normal(0, 0.1, (b, t)), jnp.float32),
    advantages=jnp.asarray(rng.normal(size=b), jnp.float32),
    loss_mask=jnp.asarray(rng.random((b, t)) < 0.8, jnp.float32),
    rewards=jnp.asarray(rng.integers(0, 2, b), jnp.float32),
    is_weights=None,
  )
  c = config_lib.set_algorithm(load_config(), name)
  spec = types.SimpleNamespace(algorithm=name)
  for k in ("eps_low", "eps_high", "agg", "group_size", "conspo_tau"):
    setattr(spec, k, c.rl[k])
  spec.dual_clip, spec.max_len = None, (6 if c.rl.agg == "seq_mean_token_sum_norm" else None)
  spec.loss_kwargs = algorithms.loss_kwargs(c.rl)
  loss, aux = algorithms.policy_loss(logp, batch, spec, jnp.float32(0.01))
  grad = jax.grad(lambda lp: algorithms.policy_loss(lp, batch, spec, jnp.float32(0.01))[0])(logp)
  assert np.isfinite(float(loss)) and np.all(np.isfinite(grad)) and float(jnp.abs(grad).sum()) > 0
  assert all(np.isfinite(float(v)) for v in aux.values())


def test_sapo_entry_passes_its_section_to_the_loss():
  rng = np.random.default_rng(1)
  logp = jnp.asarray(rng.uniform(-3, -0.1, (4, 5)), jnp.float32)
  old = logp + 0.3
  adv = jnp.asarray([1.0, -1.0, 0.5, -0.5])
  mask = jnp.ones((4, 5))
  c = config_lib.set_algorithm(load_config(), "sapo")
  c.rl.sapo.tau_neg = 2.0
  spec = types.SimpleNamespace(
    algorithm="sapo", agg=c.rl.agg, max_len=None, loss_kwargs=algorithms.loss_kwargs(c.rl)
  )
  batch = types.SimpleNamespace(old_logp=old, advantages=adv, loss_mask=mask, is_weights=None)
  got = algorithms.policy_loss(logp, batch, spec, 0.0)[0]
  want = losses.sapo(logp, old, adv, mask, tau_pos=1.0, tau_neg=2.0, agg=c.rl.agg)[0]
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_cispo_defaults_bound_the_weight_only_from_above():
  """CISPO's trainer defaults (the paper: no lower bound on the IS weight): a token with ratio
  r < 1 keeps weight r, so the loss equals the numpy sum of -min(r, 1 + eps_high) A log p."""
  c = config_lib.set_algorithm(load_config(), "cispo")
  logp = jnp.log(jnp.asarray([[0.2, 0.3], [0.4, 0.5]], jnp.float32))
  old = logp - jnp.log(jnp.asarray([[0.5, 2.0], [0.9, 1.1]], jnp.float32))  # r = 0.5, 2, 0.9, 1.1
  adv = jnp.asarray([1.0, -2.0])
  batch = types.SimpleNamespace(
    old_logp=old, advantages=adv, loss_mask=jnp.ones((2, 2)), is_weights=None
  )
  spec = types.SimpleNamespace(algorithm="cispo", eps_low=c.rl.eps_low, eps_high=c.rl.eps_high,
                               agg=c.rl.agg, max_len=None, loss_kwargs=())  # fmt: skip
  loss, aux = algorithms.policy_loss(logp, batch, spec, 0.0)
  r = np.array([[0.5, 2.0], [0.9, 1.1]])
  weight = np.minimum(r, 1 + c.rl.eps_high)
  want = np.mean(-weight * np.array([[1.0], [-2.0]]) * np.asarray(logp, np.float64))
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert float(aux["clip_frac_low"]) == 0.0 and float(aux["clip_frac_high"]) == 0.25


def test_rloo_is_the_leave_one_out_baseline():
  rewards = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.0, 1.0], np.float32)
  rl = load_config().rl
  rl.advantage, rl.group_size = "rloo", 4
  got = np.asarray(algorithms.compute_advantages(rl, jnp.asarray(rewards)))
  g = rewards.reshape(2, 4)
  want = (g - (g.sum(1, keepdims=True) - g) / 3).reshape(-1)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  _validated(advantage="rloo")


@pytest.mark.parametrize(
  "rl, message",
  [
    (dict(algorithm="ppo2"), "config.rl.algorithm: must be one of"),
    (dict(algorithm="no_such_module:loss"), "config.rl.algorithm: cannot import loss"),
    (dict(algorithm="test_algorithms:no_such_fn"), "config.rl.algorithm: cannot import loss"),
    (dict(advantage="mean"), "config.rl.advantage"),
    (dict(algorithm="scrl", advantage="rloo"), "config.rl.advantage: SCRL"),
    (dict(algorithm="scrl", group_size=3), "config.rl.group_size: must be even"),
  ],
)
def test_bad_algorithm_settings_name_the_key(rl, message):
  with pytest.raises(ValueError, match=message):
    _validated(**rl)


def test_ftis_with_a_loss_without_is_weights_is_refused():
  c = config_lib.set_algorithm(load_config(), "gmpo")
  c.rl.ftis.path = "foreign.npz"
  with pytest.raises(ValueError, match=r"config\.rl\.algorithm: .gmpo. takes no per-token"):
    config_lib.validate(c)


@pytest.mark.slow
def test_user_loss_from_its_own_module_reproduces_grpo_and_logs_its_aux(trained_run, tmp_path):
  """GRPO's loss written as a user's function gives GRPO's golden run, plus the user's aux."""
  teacher, _ = trained_run
  path = str(tmp_path / "foreign.npz")  # unused by this run
  extra = (
    ("rl.algorithm", "test_algorithms:ppo_token_loss"),
    ("rl.loss_kwargs", GRPO_KWARGS),
  )
  got = golden.run("grpo", teacher, str(tmp_path / "user"), path, extra)
  rl_rows = [r for r in got if "user_tag" in r]
  assert len(rl_rows) == 2 and all(r["user_tag"] == 7.0 for r in rl_rows)
  for r in rl_rows:
    del r["user_tag"]
  golden.assert_close(got, golden.load()["runs"]["grpo"], "user loss vs grpo")
