"""Mixed precision (`model.dtype="bfloat16"`, `model.param_dtype="float32"`): bf16 matmuls with
float32 master weights and optimiser state; the loss agrees with float32 compute within bf16's
rounding (stated tolerance: 2% relative on the loss, gradient cosine > 0.99)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from postrain import models, train
from postrain.train import _update

V = 256


def _loss_grads(dtype):
  cfg = models.get_config("tiny", vocab_size=V, dtype=dtype, param_dtype="float32")
  graphdef, params, rest = nnx.split(models.Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
  rng = np.random.default_rng(0)
  batch = {
    "tokens": rng.integers(0, V, size=(4, 24)).astype(np.int32),
    "valid": np.ones((4, 24), bool),
    "loss_mask": np.concatenate([np.zeros((4, 8)), np.ones((4, 16))], 1).astype(np.float32),
  }
  loss = functools.partial(_update.sft_loss, impl="chunked")
  (value, _), grads = jax.jit(
    jax.value_and_grad(lambda p: loss(p, graphdef, rest, batch), has_aux=True)
  )(params)
  return params, value, grads


def test_bf16_compute_matches_float32_loss():
  _, v32, g32 = _loss_grads("float32")
  pbf, vbf, gbf = _loss_grads("bfloat16")
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(pbf))  # master weights
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(gbf))  # gradients w.r.t. them
  assert vbf.dtype == jnp.float32  # log-softmax in float32
  np.testing.assert_allclose(vbf, v32, rtol=2e-2)
  a = jnp.concatenate([x.ravel() for x in jax.tree.leaves(g32)])
  b = jnp.concatenate([x.ravel() for x in jax.tree.leaves(gbf)])
  assert float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b))) > 0.99
  opt = optax.adamw(1e-3).init(pbf)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(opt) if x.ndim)


def test_config_keys_build_a_mixed_precision_model():
  c = train.base_config()
  c.model.dtype, c.model.param_dtype = "bfloat16", "float32"
  cfg = train.build_model(c, 64, seed=0).cfg
  assert (cfg.dtype, cfg.param_dtype) == ("bfloat16", "float32")
  c.model.param_dtype = ""  # default: the compute dtype
  assert train.build_model(c, 64, seed=0).cfg.param_dtype == "bfloat16"
