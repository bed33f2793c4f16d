"""Shared test setup: a persistent compilation cache keeps the suite fast on small machines."""

import os

import jax

jax.config.update(
  "jax_compilation_cache_dir", os.path.join(os.path.dirname(__file__), "..", ".jax_cache")
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
