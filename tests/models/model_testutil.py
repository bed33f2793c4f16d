"""Helpers and fixtures of the model tests (a float64 numpy reference decoder, tiny models)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from postrain import models


def randomize(model, seed: int, scale: float = 0.15):
  """Replaces every parameter by N(0, scale) (norm scales by 1 + N(0, 0.2)), in place."""
  rng = np.random.default_rng(seed)
  for path, param in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    shape, dtype = param.shape, param.dtype
    if path[-1] == "scale":
      value = 1.0 + 0.2 * rng.standard_normal(shape)
    else:
      value = scale * rng.standard_normal(shape)
    param.set_value(jnp.asarray(value, dtype))
  return model


def make_model(cfg, seed=0):
  return randomize(models.Decoder(cfg, rngs=nnx.Rngs(seed)), seed)


@pytest.fixture(scope="session")
def tiny_llama():
  cfg = models.get_config("tiny", attention_block=4)
  return cfg, make_model(cfg, 0)


@pytest.fixture(scope="session")
def tiny_qwen3():
  # Untied head and Llama-3 rope scaling on top of the Qwen3 q/k norms: every code path at once.
  cfg = models.get_config(
      "tiny", family="qwen3", tie_embeddings=False, attention_block=4,
      rope_scaling=models.RopeScaling(8.0, 1.0, 4.0, 16),
  )  # fmt: skip
  return cfg, make_model(cfg, 1)


def left_padded_batch(seed, batch, length, vocab, pads):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (batch, length)).astype(np.int32)
  valid = np.arange(length)[None, :] >= np.asarray(pads)[:, None]
  positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0).astype(np.int32)
  return tokens, valid, positions


def params_np(model):
  return {
    "/".join(map(str, p)): np.asarray(v.get_value(), np.float64)
    for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
  }


def reference_logits(cfg, params, tokens, valid, positions):
  """float64 numpy decoder written from the equations, looping over rows and heads."""
  w = params
  h = cfg.head_dim
  inv_freq = 1.0 / cfg.rope_theta ** (np.arange(0, h, 2) / h)
  if cfg.rope_scaling is not None:
    sc = cfg.rope_scaling
    out = []
    for f in inv_freq:
      wavelen = 2 * math.pi / f
      if wavelen < sc.original_max_position_embeddings / sc.high_freq_factor:
        out.append(f)
      elif wavelen > sc.original_max_position_embeddings / sc.low_freq_factor:
        out.append(f / sc.factor)
      else:
        s = (sc.original_max_position_embeddings / wavelen - sc.low_freq_factor) / (
          sc.high_freq_factor - sc.low_freq_factor
        )
        out.append((1 - s) * f / sc.factor + s * f)
    inv_freq = np.array(out)

  def rms(x, scale):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + cfg.norm_eps) * scale

  def rope(x, pos):  # x [T, H]
    ang = pos[:, None] * inv_freq[None, :]
    x1, x2 = x[:, : h // 2], x[:, h // 2 :]
    return np.concatenate(
      [x1 * np.cos(ang) - x2 * np.sin(ang), x2 * np.cos(ang) + x1 * np.sin(ang)], -1
    )

  b, t = tokens.shape
  group = cfg.num_heads // cfg.num_kv_heads
  logits = np.zeros((b, t, cfg.vocab_size))
  for r in range(b):
    x = w["embedding"][tokens[r]]
    for i in range(cfg.num_layers):
      p = f"layers/{i}/"
      y = rms(x, w[p + "attn_norm/scale"])
      attn = np.zeros((t, cfg.num_heads, h))
      for n in range(cfg.num_heads):
        kv = n // group
        q = y @ w[p + "attn/q"][:, n, :]
        k = y @ w[p + "attn/k"][:, kv, :]
        v = y @ w[p + "attn/v"][:, kv, :]
        if cfg.family == "qwen3":
          q, k = rms(q, w[p + "attn/q_norm/scale"]), rms(k, w[p + "attn/k_norm/scale"])
        q, k = rope(q, positions[r]), rope(k, positions[r])
        for tq in range(t):
          keys = [s for s in range(tq + 1) if valid[r, s]]
          if not keys:
            continue
          s = np.array([q[tq] @ k[j] for j in keys]) / math.sqrt(h)
          a = np.exp(s - s.max())
          attn[tq, n] = (a / a.sum()) @ v[keys]
      x = x + np.einsum("tnh,nhd->td", attn, w[p + "attn/o"])
      y = rms(x, w[p + "mlp_norm/scale"])
      g = y @ w[p + "mlp/gate"]
      x = x + (g / (1 + np.exp(-g)) * (y @ w[p + "mlp/up"])) @ w[p + "mlp/down"]
    x = rms(x, w["final_norm/scale"])
    head = w["embedding"].T if cfg.tie_embeddings else w["lm_head"]
    logits[r] = x @ head
  return logits


@pytest.fixture(scope="session")
def jit_forward():
  """One jitted full forward per (graphdef, shapes): tests reuse compiled functions."""
  cache = {}

  def forward(model, tokens, positions, valid):
    graphdef, state = nnx.split(model)
    if graphdef not in cache:

      @jax.jit
      def f(state, tokens, positions, valid):
        m = nnx.merge(graphdef, state)
        hidden, _ = m(tokens, positions, valid=valid)
        return m.logits(hidden)

      cache[graphdef] = f
    return cache[graphdef](state, tokens, positions, valid)

  return forward


@pytest.fixture(scope="session")
def jit_logprobs():
  """models.logprobs jitted once per (model structure, return_entropy)."""
  cache = {}

  def logprobs(model, tokens, mask, valid=None, return_entropy=False):
    graphdef, state = nnx.split(model)
    key = (graphdef, return_entropy)
    if key not in cache:

      @jax.jit
      def f(state, tokens, mask, valid):
        m = nnx.merge(graphdef, state)
        return models.logprobs(m, tokens, mask, valid=valid, return_entropy=return_entropy)

      cache[key] = f
    tokens = jnp.asarray(tokens)
    valid = jnp.ones(tokens.shape, bool) if valid is None else jnp.asarray(valid)
    return cache[key](state, tokens, jnp.asarray(mask), valid)

  return logprobs


HF_VOCAB = 256


def hf_tiny_model(kind, seed):
  """A tiny random transformers Llama / Llama-3-scaled / Qwen3 causal LM (CPU torch), weights
  larger than the 0.02 init so attention and norms matter; `HF_VOCAB` tokens."""
  import torch
  import transformers

  common = dict(vocab_size=HF_VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                rms_norm_eps=1e-6)  # fmt: skip
  if kind == "qwen3":
    cfg = transformers.Qwen3Config(**common, tie_word_embeddings=True, rope_theta=1e6)
    cls = transformers.Qwen3ForCausalLM
  else:
    rope = {"rope_type": "default", "rope_theta": 1e4}
    if kind == "llama3-scaled":  # short original context so all three frequency bands occur
      rope = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 32}  # fmt: skip
    cfg = transformers.LlamaConfig(**common, tie_word_embeddings=False, rope_parameters=rope)
    cls = transformers.LlamaForCausalLM
  torch.manual_seed(seed)
  model = cls(cfg).eval()
  with torch.no_grad():  # larger than the 0.02 init so attention and norms really matter
    for name, p in model.named_parameters():
      p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
  model.generation_config.eos_token_id = None
  model.generation_config.pad_token_id = 0
  return model


def hf_logits(hf_model, tokens, valid, positions):
  """The transformers model's logits f32[B, T, V] (numpy) for left-padded `tokens`."""
  import torch

  with torch.no_grad():
    out = hf_model(input_ids=torch.tensor(tokens, dtype=torch.long),
                   attention_mask=torch.tensor(valid, dtype=torch.long),
                   position_ids=torch.tensor(positions, dtype=torch.long))  # fmt: skip
  return out.logits.float().numpy()
