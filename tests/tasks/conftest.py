"""Shared fixtures for the postrain.tasks tests."""

import pytest

from postrain import tasks


@pytest.fixture(scope="session")
def verifier_pool():
  """One verifier worker for the whole session (starting one costs seconds)."""
  pool = tasks.VerifierPool(num_workers=1)
  yield pool
  pool.close()
