"""The decoder: token embedding, a stack of pre-norm blocks, final RMSNorm, tied or untied head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from postrain._constrain import constrain
from postrain._validation import check_rank, check_shape
from postrain.models._cache import KVCache
from postrain.models._config import ModelConfig
from postrain.models._head import DEFAULT_HEAD_BLOCK, blocked_head, blocked_logits
from postrain.models._layers import Block, RMSNorm, _init, lora_layer

# Logical axes of the residual stream (`postrain.sharding.constrain`; identity outside
# `sharding.activation_sharding`): rows over the batch mesh axes, width as `embed_act` says.
_RESIDUAL = ("batch", "length", "embed_act")


def _check_int(name: str, x) -> None:
  if not jnp.issubdtype(jnp.result_type(x), jnp.integer):
    raise TypeError(f"`{name}` must be an integer array, got dtype {jnp.result_type(x)}.")


def _concrete_int(x) -> int | None:
  """int(x) when x is a concrete value, None under tracing."""
  try:
    return int(x)
  except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError):
    return None


_REMAT_POLICIES = {
  "block": jax.checkpoint_policies.nothing_saveable,
  "save_dots": jax.checkpoint_policies.dots_saveable,
  "save_dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _remat_blocks(layers, carry, apply, policy: str):
  """The blocks (no cache) as one `jax.lax.scan` over their stacked parameters, each step
  `carry = apply(block, carry)` under `jax.checkpoint` with the named policy (`REMAT_POLICIES`):
  the backward pass recomputes what the policy does not save, one block at a time. `carry` is the
  residual stream (or a tuple of streams, `Decoder.shared_prefix`).

  A scan, not a checkpoint per unrolled block: XLA:CPU's scheduler ran the recomputations of
  unrolled checkpointed blocks up front and the peak did not fall (with an `optimization_barrier`
  on the cotangent too); the loop forces one block's recomputation at a time. The stacking copies
  the blocks' parameters once per call (their gradient comes back stacked and is split again).
  """
  graphdef = nnx.graphdef(layers[0])
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.state(layer) for layer in layers])

  def body(carry, state_index):
    state, index = state_index
    with lora_layer(index):  # LoRA dropout keys per block
      carry = apply(nnx.merge(graphdef, state), carry)
    return jax.tree.map(lambda y: constrain(y, _RESIDUAL), carry), None

  body = jax.checkpoint(body, policy=_REMAT_POLICIES[policy], prevent_cse=False)
  return jax.lax.scan(body, carry, (stacked, jnp.arange(len(layers))))[0]


def _blocks(layers, carry, apply, remat: str):
  """`carry = apply(block, carry)` for every block: unrolled, or `_remat_blocks` under a policy."""
  if remat != "none":
    return _remat_blocks(layers, carry, apply, remat)
  for i, layer in enumerate(layers):
    with lora_layer(i):  # LoRA dropout keys per block
      carry = apply(layer, carry)
    carry = jax.tree.map(lambda y: constrain(y, _RESIDUAL), carry)
  return carry


class Decoder(nnx.Module):
  """Decoder-only transformer for the Llama (incl. SmolLM2) and Qwen3 families.

  Parameters (einsum layouts): `embedding` [V, D]; per block `attn.q` [D, N, H], `attn.k`/`attn.v`
  [D, K, H], `attn.o` [N, H, D], `mlp.gate`/`mlp.up` [D, F], `mlp.down` [F, D], norm scales [D]
  (and `attn.q_norm`/`attn.k_norm` [H] for Qwen3); `final_norm` [D]; `lm_head` [D, V] when the
  embeddings are untied.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    pdt = cfg.jnp_param_dtype
    self.embedding = _init(rngs, (cfg.vocab_size, cfg.embed_dim), pdt)
    self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.embed_dim, eps=cfg.norm_eps, dtype=cfg.jnp_dtype, param_dtype=pdt)
    self.lm_head = None if cfg.tie_embeddings else _init(rngs, (cfg.embed_dim, cfg.vocab_size), pdt)

  def __call__(
    self,
    tokens: jax.Array,
    positions: jax.Array,
    *,
    valid: jax.Array | None = None,
    cache: KVCache | None = None,
  ) -> tuple[jax.Array, KVCache | None]:
    """Runs the decoder on T new tokens per row.

    Args:
      tokens: i32[B, T].
      positions: i32[B, T], RoPE positions (for left-padded rows: `max(cumsum(valid) - 1, 0)`).
      valid: bool[B, T], False marks padding (never attended to); default all True.
      cache: optional `KVCache`. The new keys/values go to slots [end, end + T) (the caller keeps
        end + T <= S; prompts are left-padded so all rows share one write index), the queries
        attend causally to the valid slots < end + T, read blockwise so the cost follows end + T.

    Returns:
      hidden: [B, T, D] after the final norm (activation dtype), and the cache with end += T
      (None without a cache). Without a cache, attention is causal over the T tokens and restricted
      to valid keys.
    """
    cfg = self.cfg
    check_rank("tokens", tokens, 2)
    _check_int("tokens", tokens)
    check_shape("positions", positions, tokens.shape, like="tokens")
    _check_int("positions", positions)
    b, t = tokens.shape
    if valid is None:
      valid = jnp.ones((b, t), bool)
    check_shape("valid", valid, tokens.shape, like="tokens")
    valid = valid.astype(bool)

    layer_cache = None
    if cache is not None:
      want = (cfg.num_layers, b, cache.size, cfg.num_kv_heads, cfg.head_dim)
      check_shape("cache.k", cache.k, want, like="(layers, batch, slots, kv heads, head dim)")
      check_shape("cache.v", cache.v, want, like="cache.k")
      check_shape("cache.valid", cache.valid, (b, cache.size), like="(batch, slots)")
      if t > cache.size:
        raise ValueError(f"{t} new tokens do not fit a cache of {cache.size} slots.")
      end = _concrete_int(cache.end)
      if end is not None and end + t > cache.size:
        raise ValueError(f"cache.end={end} + {t} new tokens exceeds {cache.size} slots.")
      slot_valid = jax.lax.dynamic_update_slice(cache.valid, valid, (0, cache.end))
      layer_cache = (cache.k, cache.v, slot_valid, cache.end)

    x = self._embed(tokens)
    if layer_cache is None:
      x = _blocks(self.layers, x, lambda block, x: block(x, positions, valid)[0], cfg.remat)
      return self.final_norm(x), None
    for i, layer in enumerate(self.layers):
      with lora_layer(i):
        x, k_cache, v_cache = layer(x, positions, valid, layer_cache, i)
      x = constrain(x, _RESIDUAL)
      layer_cache = (k_cache, v_cache, *layer_cache[2:])
    hidden = self.final_norm(x)
    k_cache, v_cache, slot_valid, end = layer_cache
    return hidden, KVCache(k=k_cache, v=v_cache, valid=slot_valid, end=end + t)

  def _embed(self, tokens: jax.Array) -> jax.Array:
    """The residual stream's input [B, T, D]: the token embeddings in the activation dtype."""
    x = jnp.take(self.embedding[...], tokens, axis=0).astype(self.cfg.jnp_dtype)
    return constrain(x, _RESIDUAL)

  def shared_prefix(
    self,
    prefix: jax.Array,
    prefix_positions: jax.Array,
    prefix_valid: jax.Array,
    tokens: jax.Array,
    positions: jax.Array,
    valid: jax.Array,
    *,
    group: int,
  ) -> tuple[jax.Array, jax.Array]:
    """The uncached forward pass of B = P * group rows whose first S columns are shared by each
    `group` consecutive rows, running those columns once per group.

    Row b is `prefix[b // group] ++ tokens[b]`; the result equals `self(rows, ...)` on the full
    rows [B, S + R] (the prefix columns of row b equal to prefix b // group's), up to float32
    summation order, in (S * P + R * B) / ((S + R) * B) of its token-wise work: the RL group
    layout (`RLBatch.prompt_group`), where every sample of a prompt repeats the prompt. The
    gradient through the shared prefix is the sum of its rows' (the reverse of the broadcast).

    Args:
      prefix, prefix_positions, prefix_valid: i32 / i32 / bool [P, S], the shared columns.
      tokens, positions, valid: i32 / i32 / bool [B, R], each row's own columns.
      group: rows per prefix (B = P * group).

    Returns:
      (hidden of the prefixes [P, S, D], hidden of the rows' own columns [B, R, D]), after the
      final norm.
    """
    cfg = self.cfg
    for name, x in (("prefix", prefix), ("tokens", tokens)):
      check_rank(name, x, 2)
      _check_int(name, x)
    check_shape("prefix_positions", prefix_positions, prefix.shape, like="prefix")
    check_shape("prefix_valid", prefix_valid, prefix.shape, like="prefix")
    check_shape("positions", positions, tokens.shape, like="tokens")
    check_shape("valid", valid, tokens.shape, like="tokens")
    if not isinstance(group, int) or group < 1 or prefix.shape[0] * group != tokens.shape[0]:
      raise ValueError(f"`group`={group!r} must be a positive int with prefix rows "
                       f"{prefix.shape[0]} x group == token rows {tokens.shape[0]}.")  # fmt: skip
    valid_p, valid_s = prefix_valid.astype(bool), valid.astype(bool)

    def apply(block, carry):
      return block.shared_prefix(*carry, prefix_positions, positions, valid_p, valid_s, group)

    hp, hs = _blocks(self.layers, (self._embed(prefix), self._embed(tokens)), apply, cfg.remat)
    return self.final_norm(hp), self.final_norm(hs)

  def output_embedding(self) -> jax.Array:
    """The output projection [D, V]: the tied embedding transposed, or the LM head."""
    if self.lm_head is None:
      return self.embedding[...].T
    return self.lm_head[...]

  def decode_head(self, block: int = DEFAULT_HEAD_BLOCK) -> jax.Array:
    """The output projection as vocabulary tiles [ceil(V / block), D, block] (`blocked_head`).

    Build it once before a decode loop and pass it to `logits(..., head=)` in every step. An
    opt-in layout: on XLA:CPU it was faster than the plain matmul on a host with contended memory
    bandwidth and slower on an idle one (docs/benchmarks.md); the sampler uses the matmul.
    """
    return blocked_head(self.output_embedding(), block=block)

  def logits(self, hidden: jax.Array, *, head: jax.Array | None = None) -> jax.Array:
    """f32[..., V] = hidden @ output_embedding(), accumulated in float32.

    `head`: optional tiles from `decode_head()` (same values, a layout for decode loops). Under
    `sharding.activation_sharding` the logits `[B, V]` / `[B, T, V]` are constrained to
    (batch, [length,] vocab_act).
    """
    if head is not None:
      logits = blocked_logits(hidden, head, self.cfg.vocab_size)
    else:
      w = self.output_embedding().astype(hidden.dtype)
      logits = jnp.einsum("...D,DV->...V", hidden, w, preferred_element_type=jnp.float32)
    if logits.ndim == 3:
      logits = constrain(logits, ("batch", "length", "vocab_act"))
    elif logits.ndim == 2:
      logits = constrain(logits, ("batch", "vocab_act"))
    return logits
