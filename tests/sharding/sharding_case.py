"""The shared test case: a tiny decoder, an optimiser, a GSPO RL spec and deterministic batches.

Used by the in-process tests and by the two-process worker, so both train the same thing.
"""

import functools

import jax
import numpy as np
import optax
from flax import nnx

from postrain import models
from postrain.train import _update

# 4 query and 4 KV heads, vocab 512, MLP 128, embed 64: divisible by every mesh axis size tested.
CFG = models.get_config("tiny", num_kv_heads=4)
BATCH, LENGTH, GROUP = 8, 16, 4

SPEC = _update.RLSpec(
    algorithm="gspo", group_size=GROUP, eps_low=3e-4, eps_high=4e-4, dual_clip=None,
    agg="seq_mean_token_mean", max_len=None, kl_coef=0.1, kl_kind="k3", entropy_coef=0.01,
    conspo_tau=10.0, logprob_impl="naive",
)  # fmt: skip


def factory() -> nnx.Module:
  return models.Decoder(CFG, rngs=nnx.Rngs(0))


def optimizer() -> optax.GradientTransformation:
  # AdamW as in the trainer, but eps=1e-6: Adam's first step is g / (|g| + eps), which multiplies
  # float32 reduction-order noise in near-zero gradients by lr / eps; with eps=1e-8 that alone is
  # ~1e-4, so an exact sharded-vs-unsharded comparison needs a well-conditioned eps.
  return optax.chain(
    optax.clip_by_global_norm(1.0), optax.adamw(1e-3, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01)
  )


def rl_update(graphdef, rest, tx):
  return _update.make_update(functools.partial(_update.rl_loss, spec=SPEC), tx, graphdef, rest)


def logprob_fn(graphdef, rest):
  return _update.make_logprob_fn(graphdef, rest, "naive")


def margin():
  return np.float32(0.0)


def inputs(step: int) -> dict[str, np.ndarray]:
  """Step `step`'s tokens and masks: left padding on some rows, responses of unequal length."""
  rng = np.random.default_rng(100 + step)
  tokens = rng.integers(0, CFG.vocab_size, (BATCH, LENGTH)).astype(np.int32)
  valid = np.ones((BATCH, LENGTH), bool)
  valid[:3, :2] = False
  mask = np.zeros((BATCH, LENGTH), np.float32)
  mask[:, 8:] = 1.0
  mask[1, 13:] = 0.0
  mask[6, 10:] = 0.0
  return dict(tokens=tokens, valid=valid, mask=mask)


def batch(step: int, logp: np.ndarray) -> dict[str, np.ndarray]:
  """The RL batch with old log-probs `logp` (+ tiny per-sequence noise, inside GSPO's clip range
  for some rows) and a perturbed reference for the KL term."""
  rng = np.random.default_rng(200 + step)
  x = inputs(step)
  mask = x["mask"]
  logp = np.asarray(logp, np.float32)
  return dict(
    x,
    loss_mask=mask,
    old_logp=(logp + rng.normal(0, 2e-4, (BATCH, 1)) * mask).astype(np.float32),
    ref_logp=(logp + rng.normal(0, 0.1, (BATCH, LENGTH)) * mask).astype(np.float32),
    advantages=rng.normal(size=(BATCH,)).astype(np.float32),
    rewards=rng.random(BATCH).astype(np.float32),
  )


@functools.cache
def reference():
  """Unsharded: initial params, and for steps 1, 2 the loss, params and optimiser state after it."""
  abstract = nnx.eval_shape(factory)
  graphdef, _, _ = nnx.split(abstract, nnx.Param, ...)
  params, rest = jax.jit(lambda: nnx.split(factory(), nnx.Param, ...)[1:])()
  tx = optimizer()
  update, lp = rl_update(graphdef, rest, tx), logprob_fn(graphdef, rest)
  opt_state = tx.init(params)
  out = {"init": jax.device_get(params), "steps": []}
  for step in range(2):
    x = inputs(step)
    b = batch(step, lp(params, x["tokens"], x["mask"], x["valid"]))
    params, opt_state, aux = update(params, opt_state, b, margin())
    out["steps"].append(
      jax.device_get((float(aux["loss"]), float(aux["grad_norm"]), params, opt_state))
    )
  return out
