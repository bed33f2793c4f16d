"""Fixtures for the advantages tests: float32 / float64 precision switches."""

import jax
import numpy as np
import pytest


@pytest.fixture
def x64():
  """Enables float64 for one test (restored afterwards)."""
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


@pytest.fixture(params=["float32", "float64"])
def prec(request):
  """(numpy dtype, atol): float64 runs under x64 with 1e-10, float32 with 1e-5."""
  if request.param == "float64":
    jax.config.update("jax_enable_x64", True)
    yield np.float64, 1e-10
    jax.config.update("jax_enable_x64", False)
  else:
    yield np.float32, 1e-5
