"""Decoder layers: RMSNorm, RoPE, grouped-query attention (full and blockwise-cached), SwiGLU.

Dimension letters in einsum strings and variable suffixes: B batch, T query tokens, S key slots,
D model width, N query heads, K key/value heads, G = N // K query heads per kv head, H head dim,
F MLP width.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from postrain._constrain import constrain
from postrain.models._config import ModelConfig

# Finite "minus infinity": a fully masked row stays finite (exp(NEG - NEG) = 1, masked out after).
_NEG = -1e30
# Key slots per step of the cached (decode) attention loop.
DEFAULT_ATTENTION_BLOCK = 128


# While set, modules create shape/dtype placeholders instead of initial values: weight import fills
# them one tensor at a time (nnx.eval_shape gives the same result but traces ~10x slower).
_ABSTRACT = contextvars.ContextVar("abstract_params", default=False)


@contextlib.contextmanager
def abstract_params():
  token = _ABSTRACT.set(True)
  try:
    yield
  finally:
    _ABSTRACT.reset(token)


# While set, LoRA adapters are skipped: the forward pass is the frozen base's (`models.lora_disabled`,
# entered inside the traced function so each trace is of one kind).
_LORA_OFF = contextvars.ContextVar("lora_off", default=False)


# LoRA adapter dropout (`models.lora.lora_dropout`), set while a training forward pass is traced:
# (rate, the step's key) or None; `_LORA_LAYER` the index of the block being traced (an int, or a
# traced int inside the remat scan).
_LORA_DROPOUT = contextvars.ContextVar("lora_dropout", default=None)
_LORA_LAYER = contextvars.ContextVar("lora_layer", default=0)
# The adapter sites of a block, in the order their index is folded into the dropout key.
LORA_SITES = ("q", "k", "v", "o", "gate", "up", "down")


def lora_dropout_active() -> bool:
  """Whether LoRA adapter dropout is on in the forward pass being traced (`lora_dropout`)."""
  drop = _LORA_DROPOUT.get()
  return drop is not None and drop[0] > 0


@contextlib.contextmanager
def lora_layer(index):
  """While block `index` is traced: its adapters' dropout keys fold in `index`."""
  token = _LORA_LAYER.set(index)
  try:
    yield
  finally:
    _LORA_LAYER.reset(token)


def lora_dropout_key(key: jax.Array, layer, name: str) -> jax.Array:
  """The dropout key of adapter `name` (`LORA_SITES`) of block `layer` under the step's `key`:
  fold_in(fold_in(key, layer), site index)."""
  return jax.random.fold_in(jax.random.fold_in(key, layer), LORA_SITES.index(name))


def dropout_input(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
  """Inverted dropout (`nnx.Dropout` / `torch.nn.Dropout` in training): each element kept with
  probability 1 - rate and scaled by 1 / (1 - rate), else 0."""
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def weight(param: nnx.Param, dtype: jnp.dtype) -> jax.Array:
  """A projection weight in `dtype`: the array itself, or a quantised base weight (a qwix `QArray`,
  `models.quantize_base`) dequantised."""
  value = param.get_value()
  if hasattr(value, "qvalue"):  # qwix.QArray (imported lazily: only quantised bases need qwix)
    import qwix

    return qwix.dequantize(value).astype(dtype)
  return value.astype(dtype)


def adapt(module: nnx.Module, name: str, x: jax.Array, y: jax.Array) -> jax.Array:
  """y + scale * (x @ A @ B) reshaped like y, when `module` holds a LoRA adapter for its weight
  `name` (attribute `{name}_lora`, an `nnx.LoRA` with a static `scale` = alpha / rank); else y.
  Under `models.lora.lora_dropout(rate, key)`: y + scale * (dropout(x) @ A @ B), the mask drawn
  with `lora_dropout_key(key, block index, name)`.

  x: the projection's input with its input axes flattened last ([B, T, in]); y: its output.
  """
  adapter = getattr(module, f"{name}_lora", None)
  if adapter is None or _LORA_OFF.get():
    return y
  x = x.astype(y.dtype)
  drop = _LORA_DROPOUT.get()
  if drop is not None:  # training forward with adapter dropout: on the adapter's input only
    rate, key = drop
    x = dropout_input(x, rate, lora_dropout_key(key, _LORA_LAYER.get(), name))
  delta = adapter(x)
  return y + (adapter.scale * delta).astype(y.dtype).reshape(y.shape)


def _init(rngs: nnx.Rngs, shape: tuple[int, ...], dtype: jnp.dtype) -> nnx.Param:
  if _ABSTRACT.get():
    return nnx.Param(jax.ShapeDtypeStruct(shape, dtype))
  # HF's initializer_range for Llama/Qwen3: N(0, 0.02).
  return nnx.Param((0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype))


def _ones(shape: tuple[int, ...], dtype: jnp.dtype) -> nnx.Param:
  if _ABSTRACT.get():
    return nnx.Param(jax.ShapeDtypeStruct(shape, dtype))
  return nnx.Param(jnp.ones(shape, dtype))


class RMSNorm(nnx.Module):
  """y = w * x / sqrt(mean(x^2) + eps), normalised in float32 (arXiv:1910.07467)."""

  def __init__(self, dim: int, *, eps: float, dtype: jnp.dtype, param_dtype: jnp.dtype):
    self.scale = _ones((dim,), param_dtype)
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    # Same rounding order as HF: normalise in f32, cast, then scale.
    return x32.astype(self.dtype) * self.scale[...].astype(self.dtype)


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
  """Inverse RoPE frequencies f64[H/2]: theta^(-2i/H), with Llama-3 scaling when configured."""
  h = cfg.head_dim
  inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, h, 2, dtype=np.float64) / h))
  sc = cfg.rope_scaling
  if sc is None:
    return inv_freq
  low_wavelen = sc.original_max_position_embeddings / sc.low_freq_factor
  high_wavelen = sc.original_max_position_embeddings / sc.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = np.where(wavelen > low_wavelen, inv_freq / sc.factor, inv_freq)
  smooth = (sc.original_max_position_embeddings / wavelen - sc.low_freq_factor) / (
    sc.high_freq_factor - sc.low_freq_factor
  )
  smoothed = (1 - smooth) * scaled / sc.factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return np.where(medium, smoothed, scaled)


def apply_rope(x_BTNH: jax.Array, positions_BT: jax.Array, inv_freq) -> jax.Array:
  """RoPE (arXiv:2104.09864) in HF's "rotate_half" layout (halves, not interleaved pairs).

  With (x1, x2) the two halves of a head and a = position * inv_freq:
  out = (x1 cos a - x2 sin a, x2 cos a + x1 sin a), computed in float32.
  """
  inv_freq_h = jnp.asarray(np.asarray(inv_freq), jnp.float32)
  angles_BTh = positions_BT[..., None].astype(jnp.float32) * inv_freq_h
  sin = jnp.sin(angles_BTh)[:, :, None, :]
  cos = jnp.cos(angles_BTh)[:, :, None, :]
  x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BTNH.dtype)


def full_attention(
  q_BTKGH: jax.Array, k_BSKH: jax.Array, v_BSKH: jax.Array, valid_BS: jax.Array
) -> jax.Array:
  """Causal softmax attention over the same T tokens (S == T), keys restricted to `valid`."""
  t = q_BTKGH.shape[1]
  scale = q_BTKGH.shape[-1] ** -0.5
  s_BKGTS = jnp.einsum("BTKGH,BSKH->BKGTS", q_BTKGH, k_BSKH, preferred_element_type=jnp.float32)
  causal_TS = jnp.tril(jnp.ones((t, t), bool))
  mask = causal_TS[None, None, None] & valid_BS[:, None, None, None, :]
  s_BKGTS = jnp.where(mask, s_BKGTS * scale, _NEG)
  p_BKGTS = jax.nn.softmax(s_BKGTS, axis=-1).astype(v_BSKH.dtype)
  return jnp.einsum("BKGTS,BSKH->BTKGH", p_BKGTS, v_BSKH)


def prefix_attention(
  q_BRKGH: jax.Array,
  kp_PSKH: jax.Array,
  vp_PSKH: jax.Array,
  valid_PS: jax.Array,
  k_BRKH: jax.Array,
  v_BRKH: jax.Array,
  valid_BR: jax.Array,
  group: int,
) -> jax.Array:
  """Attention of R suffix tokens per row over a prefix shared by `group` consecutive rows.

  Row b (B = P * group) continues prefix p = b // group: its query at suffix position r attends
  to the valid prefix slots of p and to its own valid suffix tokens <= r, one softmax over both,
  i.e. the causal `full_attention` of the row `prefix_p ++ suffix_b` restricted to its suffix
  queries, without copying the prefix's keys and values per row.

  Returns: [B, R, K, G, H].
  """
  b, r, k, g, h = q_BRKGH.shape
  p, s = valid_PS.shape
  scale = h**-0.5
  q_PnRKGH = q_BRKGH.reshape(p, group, r, k, g, h)
  sp = jnp.einsum("PnRKGH,PSKH->PnKGRS", q_PnRKGH, kp_PSKH, preferred_element_type=jnp.float32)
  sp = jnp.where(valid_PS[:, None, None, None, None, :], sp * scale, _NEG).reshape(b, k, g, r, s)
  ss = jnp.einsum("BRKGH,BSKH->BKGRS", q_BRKGH, k_BRKH, preferred_element_type=jnp.float32)
  causal_RS = jnp.tril(jnp.ones((r, r), bool))
  own = causal_RS[None, None, None] & valid_BR[:, None, None, None, :]
  ss = jnp.where(own, ss * scale, _NEG)
  probs = jax.nn.softmax(jnp.concatenate([sp, ss], axis=-1), axis=-1).astype(v_BRKH.dtype)
  pp = probs[..., :s].reshape(p, group, k, g, r, s)
  out = jnp.einsum("PnKGRS,PSKH->PnRKGH", pp, vp_PSKH).reshape(b, r, k, g, h)
  return out + jnp.einsum("BKGRS,BSKH->BRKGH", probs[..., s:], v_BRKH)


def cached_attention(
  q_BTKGH: jax.Array,
  k_cache: jax.Array,
  v_cache: jax.Array,
  layer: int,
  slot_valid_BS: jax.Array,
  end: jax.Array,
  *,
  block: int = DEFAULT_ATTENTION_BLOCK,
) -> jax.Array:
  """Attention of T new queries (cache slots end..end+T-1) over the live cache slots.

  k_cache, v_cache: [L, B, S, K, H] (the new tokens already written). The loop runs
  ceil((end + T) / block) times (a traced trip count), each step reading one block of `layer`'s
  slots with an online softmax (running max m, normaliser denom, accumulator acc;
  arXiv:2205.14135),
  so the cost follows the live length, not the cache size S.
  """
  b, t, k, g, h = q_BTKGH.shape
  s = k_cache.shape[2]
  block = min(block, s)
  scale = h**-0.5
  q_slots_T = end + jnp.arange(t)

  def body(i, carry):
    m, denom, acc = carry
    # The last block may overrun S: read the final `block` slots and drop those already seen.
    start = jnp.minimum(i * block, s - block)
    kb = jax.lax.dynamic_slice(k_cache, (layer, 0, start, 0, 0), (1, b, block, k, h))[0]
    vb = jax.lax.dynamic_slice(v_cache, (layer, 0, start, 0, 0), (1, b, block, k, h))[0]
    valid_BS = jax.lax.dynamic_slice(slot_valid_BS, (0, start), (b, block))
    slots_S = start + jnp.arange(block)
    causal_TS = (slots_S[None, :] <= q_slots_T[:, None]) & (slots_S >= i * block)[None, :]
    mask = causal_TS[None, None, None] & valid_BS[:, None, None, None, :]
    sc = jnp.einsum("BTKGH,BSKH->BKGTS", q_BTKGH, kb, preferred_element_type=jnp.float32)
    sc = jnp.where(mask, sc * scale, _NEG)
    m_new = jnp.maximum(m, sc.max(axis=-1))
    p = jnp.exp(sc - m_new[..., None]) * mask
    corr = jnp.exp(m - m_new)
    denom = denom * corr + p.sum(axis=-1)
    pv = jnp.einsum("BKGTS,BSKH->BKGTH", p.astype(vb.dtype), vb, preferred_element_type=jnp.float32)
    return m_new, denom, acc * corr[..., None] + pv

  m0 = jnp.full((b, k, g, t), _NEG, jnp.float32)
  l0 = jnp.zeros((b, k, g, t), jnp.float32)
  acc0 = jnp.zeros((b, k, g, t, h), jnp.float32)
  n_blocks = (end + t + block - 1) // block
  _, denom, acc = jax.lax.fori_loop(0, n_blocks, body, (m0, l0, acc0))
  # A query with no valid key (padding) gets 0, not NaN.
  out = acc / jnp.maximum(denom, 1e-30)[..., None]
  return jnp.transpose(out, (0, 3, 1, 2, 4)).astype(q_BTKGH.dtype)


class Attention(nnx.Module):
  """Grouped-query attention (arXiv:2305.13245) with RoPE, per-head q/k RMSNorm for Qwen3.

  softmax(q k^T / sqrt(H)) v per head, with G = N / K query heads sharing each kv head; the
  scores and the softmax are float32 whatever the activation dtype.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, n, kv, h = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    pdt, self.dtype = cfg.jnp_param_dtype, cfg.jnp_dtype
    self.q = _init(rngs, (d, n, h), pdt)
    self.k = _init(rngs, (d, kv, h), pdt)
    self.v = _init(rngs, (d, kv, h), pdt)
    self.o = _init(rngs, (n, h, d), pdt)
    if cfg.qk_norm:
      self.q_norm = RMSNorm(h, eps=cfg.norm_eps, dtype=self.dtype, param_dtype=pdt)
      self.k_norm = RMSNorm(h, eps=cfg.norm_eps, dtype=self.dtype, param_dtype=pdt)
    else:
      self.q_norm = self.k_norm = None
    # A tuple, not an array: static module attributes must be hashable.
    self.inv_freq = tuple(float(f) for f in rope_inv_freq(cfg))
    self.num_kv_heads = kv
    self.block = cfg.attention_block

  def _project(self, x_BTD, positions_BT):
    """(q [B, T, K, G, H], k [B, T, K, H], v [B, T, K, H]) of the normed input, RoPE applied."""
    dt = self.dtype
    q = adapt(self, "q", x_BTD, jnp.einsum("BTD,DNH->BTNH", x_BTD, weight(self.q, dt)))
    k = adapt(self, "k", x_BTD, jnp.einsum("BTD,DKH->BTKH", x_BTD, weight(self.k, dt)))
    v = adapt(self, "v", x_BTD, jnp.einsum("BTD,DKH->BTKH", x_BTD, weight(self.v, dt)))
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    q = apply_rope(q, positions_BT, self.inv_freq)
    k = apply_rope(k, positions_BT, self.inv_freq)
    # Activation sharding (identity outside `sharding.activation_sharding`): heads over tensor.
    q = constrain(q, ("batch", "length", "heads", "head_dim"))
    k = constrain(k, ("batch", "length", "kv_heads", "head_dim"))
    v = constrain(v, ("batch", "length", "kv_heads", "head_dim"))
    b, t, n, h = q.shape
    # Query head n = kv_head * G + g (HF's repeat_kv order).
    return q.reshape(b, t, self.num_kv_heads, n // self.num_kv_heads, h), k, v

  def _output(self, out_BTKGH):
    """The output projection of the attention result [B, T, K, G, H] -> [B, T, D]."""
    b, t, k, g, h = out_BTKGH.shape
    # As one [N * H, D] matmul: with the [N, H, D] einsum XLA transposed the weight every step.
    o_MD = weight(self.o, self.dtype).reshape(k * g * h, -1)
    out_BTM = out_BTKGH.reshape(b, t, k * g * h).astype(self.dtype)
    return adapt(self, "o", out_BTM, jnp.einsum("BTM,MD->BTD", out_BTM, o_MD))

  def __call__(self, x_BTD, positions_BT, valid_BT, cache=None, layer: int = 0):
    """Returns (out_BTD, k_cache, v_cache); the caches are None without a cache.

    cache: (k_cache [L,B,S,K,H], v_cache, slot_valid [B,S] (already updated), end i32[]).
    """
    q_BTKGH, k, v = self._project(x_BTD, positions_BT)
    if cache is None:
      return self._output(full_attention(q_BTKGH, k, v, valid_BT)), None, None
    k_cache, v_cache, slot_valid, end = cache
    idx = (layer, 0, end, 0, 0)
    k_cache = jax.lax.dynamic_update_slice(k_cache, k[None].astype(k_cache.dtype), idx)
    v_cache = jax.lax.dynamic_update_slice(v_cache, v[None].astype(v_cache.dtype), idx)
    out = cached_attention(
      q_BTKGH.astype(k_cache.dtype), k_cache, v_cache, layer, slot_valid, end, block=self.block
    )
    return self._output(out), k_cache, v_cache

  def shared_prefix(self, xp_PSD, xs_BRD, pos_PS, pos_BR, valid_PS, valid_BR, group: int):
    """Attention of rows that share a prefix (`Decoder.shared_prefix`): (out_PSD, out_BRD).

    The P prefixes attend causally to themselves; row b's R suffix tokens attend to prefix
    b // group and causally to their own row (`prefix_attention`)."""
    qp, kp, vp = self._project(xp_PSD, pos_PS)
    qs, ks, vs = self._project(xs_BRD, pos_BR)
    out_p = full_attention(qp, kp, vp, valid_PS)
    out_s = prefix_attention(qs, kp, vp, valid_PS, ks, vs, valid_BR, group)
    return self._output(out_p), self._output(out_s)


class MLP(nnx.Module):
  """SwiGLU: down(silu(x @ gate) * (x @ up)) (arXiv:2002.05202)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, f, pdt = cfg.embed_dim, cfg.mlp_dim, cfg.jnp_param_dtype
    self.gate = _init(rngs, (d, f), pdt)
    self.up = _init(rngs, (d, f), pdt)
    self.down = _init(rngs, (f, d), pdt)
    self.dtype = cfg.jnp_dtype

  def __call__(self, x_BTD: jax.Array) -> jax.Array:
    dt = self.dtype
    gate_BTF = adapt(self, "gate", x_BTD, jnp.einsum("BTD,DF->BTF", x_BTD, weight(self.gate, dt)))
    up_BTF = adapt(self, "up", x_BTD, jnp.einsum("BTD,DF->BTF", x_BTD, weight(self.up, dt)))
    hidden_BTF = constrain(jax.nn.silu(gate_BTF) * up_BTF, ("batch", "length", "mlp_act"))
    down_BTD = jnp.einsum("BTF,FD->BTD", hidden_BTF, weight(self.down, dt))
    return adapt(self, "down", hidden_BTF, down_BTD)


class Block(nnx.Module):
  """Pre-norm residual block: x + attn(norm(x)), then h + mlp(norm(h))."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    kw = dict(eps=cfg.norm_eps, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype)
    self.attn_norm = RMSNorm(cfg.embed_dim, **kw)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.embed_dim, **kw)
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x_BTD, positions_BT, valid_BT, cache=None, layer: int = 0):
    attn_BTD, k_cache, v_cache = self.attn(
      self.attn_norm(x_BTD), positions_BT, valid_BT, cache, layer
    )
    h_BTD = x_BTD + attn_BTD
    return h_BTD + self.mlp(self.mlp_norm(h_BTD)), k_cache, v_cache

  def shared_prefix(self, xp_PSD, xs_BRD, pos_PS, pos_BR, valid_PS, valid_BR, group: int):
    """The block on P shared prefixes and B = P * group suffix rows (`Decoder.shared_prefix`):
    token-wise parts on each stream, attention by `Attention.shared_prefix`."""
    ap, as_ = self.attn.shared_prefix(
      self.attn_norm(xp_PSD), self.attn_norm(xs_BRD), pos_PS, pos_BR, valid_PS, valid_BR, group
    )
    hp, hs = xp_PSD + ap, xs_BRD + as_
    return hp + self.mlp(self.mlp_norm(hp)), hs + self.mlp(self.mlp_norm(hs))
