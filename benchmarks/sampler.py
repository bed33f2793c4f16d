"""Sampler throughput: prefill and decode tokens/s, decode against the memory roofline.

Config "tiny-qwen3" (4 layers, d 256, 4 heads x 64, 4 KV heads, MLP 1024, vocab 32000, tied,
float32), batch 8, prompt 32, 128 new tokens, cache 256 (and 1024), stop tokens disabled.
Everything is measured side by side in one process, alternating, median over repeats:

  roofline: bytes read per decode step = parameters + the live KV cache (k and v of every layer
    for the slots attended), divided by the bandwidth of a large (256 MiB) array copy measured
    here (bytes read + bytes written per second).
  cache 1024 / cache 256: decode time ratio (the model reads only the live cache blocks).

  python benchmarks/sampler.py                   # postrain only
  python benchmarks/sampler.py --compare-tunix   # + Tunix 0.1.7's Sampler, run in its own venv

`--compare-tunix` creates `benchmarks/.venv-tunix` (git-ignored) with `google-tunix==0.1.7` on
first use, then re-runs this script inside it with `--tunix-worker` (postrain from this checkout
via PYTHONPATH), which times Tunix's `Sampler` and postrain's alternately on the identical config
and weight shapes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, "benchmarks", ".venv-tunix")
BATCH, PROMPT, MAX_NEW = 8, 32, 128


def _median_time(fn, repeats):
  ts = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
  return float(np.median(ts))


class CopyBandwidth:
  """Bandwidth of a donated 256 MiB elementwise copy: (bytes read + bytes written) / s."""

  def __init__(self, mib: int = 256):
    import jax
    import jax.numpy as jnp

    self.nbytes = mib * 2**20
    self.x = jnp.ones((self.nbytes // 4,), jnp.float32)
    self.f = jax.jit(lambda a: a * 1.0001, donate_argnums=0)
    self.x = self.f(self.x).block_until_ready()

  def time_once(self) -> float:
    t = time.perf_counter()
    self.x = self.f(self.x).block_until_ready()
    return time.perf_counter() - t

  def gbps(self, t: float) -> float:
    return 2 * self.nbytes / t / 1e9


class PostrainRun:
  """One postrain sampler configuration; prefill and decode timed separately."""

  def __init__(self, model, prompts, *, cache_size, temperature=1.0, top_k=None, top_p=None):
    import jax

    from postrain import sampling

    self.jax = jax
    self.sampler = sampling.Sampler(model, cache_size=cache_size)
    self.key = jax.random.key(0)
    self.prepared, self.mode = self.sampler._prepare(
      prompts,
      None,
      key=self.key,
      max_new_tokens=MAX_NEW,
      temperature=temperature,
      top_k=top_k,
      top_p=top_p,
      n=1,
      stop_tokens=(),
      pad_id=0,
    )
    self.temperature, self.top_p = temperature, top_p
    self.run()  # compile

  def run(self) -> tuple[float, float]:
    s, p, jax = self.sampler, self.prepared, self.jax
    t0 = time.perf_counter()
    logits, cache = s._run_prefill(p, self.mode)
    jax.block_until_ready((logits, cache))
    t1 = time.perf_counter()
    out = s._run_decode(
      logits,
      cache,
      p,
      self.mode,
      key=self.key,
      temperature=self.temperature,
      top_p=self.top_p,
      stop_tokens=(),
    )
    jax.block_until_ready(out)
    t2 = time.perf_counter()
    assert int(out[3].min()) == MAX_NEW  # every row decoded all steps (no stop token)
    return t1 - t0, t2 - t1


class BareModelLoop:
  """The model alone: the same while_loop of cached steps + `model.logits`, no sampling.

  The next token is a cheap function of all logits (so none is skipped); this bounds what any
  sampler on this model can reach, and the gap to the T=1 row is the sampler's own cost.
  `blocked_head=True` computes the logits with the vocabulary-tiled head (`Decoder.decode_head`)
  instead of the plain `[8, D] x [D, V]` matmul the sampler uses: the side-by-side effect (the
  tiled head was faster on a loaded host, slower on an idle one; docs/benchmarks.md).
  """

  def __init__(self, model, prompts, *, cache_size, blocked_head=False):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from postrain import models

    self.jax = jax
    graphdef, self.state = nnx.split(model)
    cfg = model.cfg
    tokens = jnp.asarray(prompts, jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(PROMPT), tokens.shape)

    def prefill(state):
      m = nnx.merge(graphdef, state)
      cache = models.init_cache(cfg, batch_size=BATCH, cache_size=cache_size)
      hidden, cache = m(tokens, positions, cache=cache)
      return m.logits(hidden[:, -1]), cache

    def decode(state, logits, cache):
      m = nnx.merge(graphdef, state)
      head = m.decode_head() if blocked_head else None  # built once, outside the loop

      def body(carry):
        step, logits, cache = carry
        last = (jnp.max(logits, axis=-1) > 0).astype(jnp.int32)[:, None]
        hidden, cache = m(last, jnp.full((BATCH, 1), PROMPT - 1, jnp.int32) + step, cache=cache)
        return step + 1, m.logits(hidden[:, 0], head=head), cache

      return jax.lax.while_loop(lambda c: c[0] < MAX_NEW, body, (jnp.int32(1), logits, cache))

    self.prefill = jax.jit(prefill)
    self.decode = jax.jit(decode, donate_argnums=(2,))
    self.run()

  def run(self) -> tuple[float, float]:
    jax = self.jax
    t0 = time.perf_counter()
    logits, cache = jax.block_until_ready(self.prefill(self.state))
    t1 = time.perf_counter()
    jax.block_until_ready(self.decode(self.state, logits, cache))
    return t1 - t0, time.perf_counter() - t1


def decode_bytes(cfg, tp, *, kv_bytes=4) -> float:
  """Bytes a decode loop must read: all parameters + the live k/v slots, summed over its steps."""
  import jax
  from flax import nnx

  from postrain import models

  abstract = nnx.eval_shape(lambda: models.Decoder(cfg, rngs=nnx.Rngs(0)))
  params = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(abstract)))
  per_slot = 2 * cfg.num_layers * BATCH * cfg.num_kv_heads * cfg.head_dim * kv_bytes
  # Decode step s = 1 .. MAX_NEW - 1 feeds the token at slot tp + s - 1 and attends tp + s slots.
  live = sum(tp + s for s in range(1, MAX_NEW))
  return params * (MAX_NEW - 1) + per_slot * live, params


def run_postrain(repeats: int) -> dict:
  import jax
  from flax import nnx

  from postrain import models

  cfg = models.get_config("tiny-qwen3")
  model = models.Decoder(cfg, rngs=nnx.Rngs(0))
  prompts = np.random.default_rng(0).integers(1, cfg.vocab_size, (BATCH, PROMPT))
  bw = CopyBandwidth()
  runs = {
    "T=1, cache 256": PostrainRun(model, prompts, cache_size=256),
    "T=1, cache 1024": PostrainRun(model, prompts, cache_size=1024),
    "greedy, cache 256": PostrainRun(model, prompts, cache_size=256, temperature=0.0),
    "top_p=0.95, cache 256": PostrainRun(model, prompts, cache_size=256, top_p=0.95),
    "top_k=50, cache 256": PostrainRun(model, prompts, cache_size=256, top_k=50),
    "model only, cache 256": BareModelLoop(model, prompts, cache_size=256),
    "model only, tiled head": BareModelLoop(model, prompts, cache_size=256, blocked_head=True),
  }
  times = {k: [] for k in runs}
  copies = []
  for _ in range(repeats):
    copies.append(min(bw.time_once() for _ in range(3)))
    for k, r in runs.items():
      times[k].append(r.run())
  gbps = bw.gbps(float(np.median(copies)))
  total_bytes, param_bytes = decode_bytes(cfg, PROMPT)
  roofline_s = total_bytes / (gbps * 1e9)
  print(
    f"jax {jax.__version__}, {jax.devices()[0].platform}; copy bandwidth {gbps:.1f} GB/s "
    f"(median of {repeats}); parameters {param_bytes / 2**20:.1f} MiB; "
    f"decode roofline {BATCH * (MAX_NEW - 1) / roofline_s:.0f} tok/s"
  )
  print(f"{'run':24s} {'prefill tok/s':>14s} {'decode tok/s':>13s} {'of roofline':>12s}")
  result = {"gbps": gbps}
  for k in runs:
    t = np.asarray(times[k])
    pre, dec = np.median(t[:, 0]), np.median(t[:, 1])
    frac = roofline_s / dec
    result[k] = (pre, dec, frac)
    print(f"{k:24s} {BATCH * PROMPT / pre:14.0f} {BATCH * (MAX_NEW - 1) / dec:13.0f} {frac:11.0%}")
  ratio = np.median(
    np.asarray(times["T=1, cache 1024"])[:, 1] / np.asarray(times["T=1, cache 256"])[:, 1]
  )
  print(f"decode time cache 1024 / cache 256 (median of per-repeat ratios): {ratio:.2f}x")
  over = np.median(
    np.asarray(times["T=1, cache 256"])[:, 1] / np.asarray(times["model only, cache 256"])[:, 1]
  )
  print(f"decode time T=1 sampler / model-only loop (median of per-repeat ratios): {over:.2f}x")
  head = np.median(
    np.asarray(times["model only, cache 256"])[:, 1]
    / np.asarray(times["model only, tiled head"])[:, 1]
  )
  print(f"decode time model-only loop, matmul head / tiled head (median of ratios): {head:.2f}x")
  return result


def ensure_tunix_venv() -> str:
  python = os.path.join(VENV, "bin", "python")
  if not os.path.exists(python):
    subprocess.check_call([sys.executable, "-m", "venv", VENV])
  probe = subprocess.run([python, "-c", "import tunix"], capture_output=True)
  if probe.returncode:
    subprocess.check_call([python, "-m", "pip", "install", "-q", "google-tunix==0.1.7"])
  return python


class _IdTokenizer:
  """Tunix needs a tokenizer: prompts are passed as space-separated token ids."""

  def encode(self, text, **_):
    return [int(t) for t in text.split()]

  def decode(self, ids, **_):
    return " ".join(str(int(i)) for i in ids)

  def bos_id(self):
    return 0  # falsy: Tunix adds no BOS

  def eos_id(self):
    return 1

  def pad_id(self):
    return 0


def tunix_worker(repeats: int) -> None:
  """Runs inside the Tunix venv: Tunix's Sampler and postrain's, alternately, same shapes."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from tunix.generate import sampler as tunix_sampler
  from tunix.models.qwen3 import model as tunix_qwen3

  from postrain import models

  cfg = models.get_config("tiny-qwen3")
  tcfg = tunix_qwen3.ModelConfig(
    num_layers=cfg.num_layers,
    vocab_size=cfg.vocab_size,
    embed_dim=cfg.embed_dim,
    hidden_dim=cfg.mlp_dim,
    num_heads=cfg.num_heads,
    head_dim=cfg.head_dim,
    num_kv_heads=cfg.num_kv_heads,
    rope_theta=int(cfg.rope_theta),
    norm_eps=cfg.norm_eps,
    use_tied_embedding=True,
  )
  tmodel = tunix_qwen3.Qwen3(tcfg, rngs=nnx.Rngs(0))
  tparams = sum(x.size for x in jax.tree.leaves(nnx.state(tmodel, nnx.Param)))
  model = models.Decoder(cfg, rngs=nnx.Rngs(0))
  pparams = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert tparams == pparams, (tparams, pparams)
  prompts = np.random.default_rng(0).integers(2, cfg.vocab_size, (BATCH, PROMPT))
  results = {}
  for cache in (256, 1024):
    ts = tunix_sampler.Sampler(
      tmodel,
      _IdTokenizer(),
      tunix_sampler.CacheConfig(
        cache_size=cache,
        num_layers=cfg.num_layers,
        num_kv_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
      ),
    )
    ts.eos_ids = jnp.array([1])
    ids = jnp.asarray(prompts, jnp.int32)

    def tunix_run(greedy, ts=ts, ids=ids):
      state = ts.init_sample_state(
        ids,
        total_sampling_steps=PROMPT + MAX_NEW,
        include_logits=False,
        forbidden_token_ids=None,
        temperature=1.0,
        top_p=None if greedy else 1.0,
        top_k=None,
        seed=jax.random.key(0),
        beam_size=None,
      )
      params = ts._flattened_transformer_state
      t0 = time.perf_counter()
      state = ts._compiled_prefill_fn(params, state, None, echo=False)
      jax.block_until_ready(state.token_buffer)
      t1 = time.perf_counter()
      state = ts._compiled_decode_fn(params, state)
      jax.block_until_ready(state.token_buffer)
      t2 = time.perf_counter()
      steps = int(state.decoding_step) - (PROMPT - 1) - 1  # decode-loop steps actually run
      return t1 - t0, t2 - t1, steps

    for mode in ("T=1", "greedy"):
      pr = PostrainRun(
        model, prompts, cache_size=cache, temperature=0.0 if mode == "greedy" else 1.0
      )
      tunix_run(mode == "greedy")  # compile
      tt, pt = [], []
      for _ in range(repeats):
        tt.append(tunix_run(mode == "greedy"))
        pt.append(pr.run())
      tt, pt = np.asarray(tt), np.asarray(pt)
      t_dec = tt[:, 1] / tt[:, 2]  # per step: Tunix may stop early if every row hits eos
      p_dec = pt[:, 1] / (MAX_NEW - 1)
      results[(mode, cache)] = (np.median(tt[:, 0] / pt[:, 0]), np.median(t_dec / p_dec))
  print(
    f"jax {jax.__version__}; Tunix 0.1.7 vs postrain, same shapes ({pparams / 1e6:.1f}M params),"
    f" alternating, median of {repeats} per-repeat ratios"
  )
  print(f"{'mode, cache':20s} {'prefill speedup':>16s} {'decode tok/s speedup':>21s}")
  for (mode, cache), (pre, dec) in results.items():
    print(f"{mode + ', ' + str(cache):20s} {pre:15.2f}x {dec:20.2f}x")


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--compare-tunix", action="store_true")
  ap.add_argument("--tunix-worker", action="store_true", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.tunix_worker:
    tunix_worker(args.repeats)
    return
  run_postrain(args.repeats)
  if args.compare_tunix:
    python = ensure_tunix_venv()
    # postrain is imported from this checkout (PYTHONPATH), Tunix and its pins from the venv.
    env = dict(os.environ, PYTHONPATH=ROOT)
    subprocess.check_call(
      [python, os.path.abspath(__file__), "--tunix-worker", "--repeats", str(args.repeats)],
      cwd=ROOT,
      env=env,
    )


if __name__ == "__main__":
  main()
