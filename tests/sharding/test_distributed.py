"""Single-process behaviour of the multi-host helpers (the two-process run is test_multiprocess)."""

import jax
import numpy as np
import pytest

from postrain import sharding
from postrain.train import _distributed


@pytest.fixture
def no_jax_env(monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name, raising=False)


def test_single_process_is_a_no_op(no_jax_env):
  assert _distributed.initialize_distributed(None) is False
  assert (
    _distributed.initialize_distributed(
      {"distributed": {"coordinator_address": "", "num_processes": 1, "process_id": 0}}
    )
    is False
  )
  assert not jax.distributed.is_initialized()


def test_bad_multi_process_config_is_a_value_error(no_jax_env, monkeypatch):
  with pytest.raises(ValueError, match="coordinator_address"):
    _distributed.initialize_distributed({"num_processes": 2, "process_id": 0})
  with pytest.raises(ValueError, match=r"process_id must be in \[0, 2\), got 2"):
    _distributed.initialize_distributed(
      {"coordinator_address": "localhost:1", "num_processes": 2, "process_id": 2}
    )
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1")
  with pytest.raises(ValueError, match=r"process_id must be in \[0, 4\), got -1"):
    _distributed.initialize_distributed({})
  assert not jax.distributed.is_initialized()


def test_host_batches_become_global_arrays():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  bsh = sharding.batch_sharding(mesh)
  # One process holds every row.
  assert _distributed.local_rows(bsh, 8) == slice(0, 8)
  assert _distributed.local_items(list("abcd"), bsh, rows_per_item=2) == list("abcd")
  host = {
    "tokens": np.arange(8 * 3, dtype=np.int32).reshape(8, 3),
    "adv": np.linspace(-1, 1, 8, dtype=np.float32),
  }
  glob = _distributed.host_to_global(host, bsh, 8)
  assert glob["tokens"].sharding == bsh and glob["tokens"].shape == (8, 3)
  for shard in glob["tokens"].addressable_shards:
    assert shard.data.shape == (2, 3)
    np.testing.assert_array_equal(np.asarray(shard.data), host["tokens"][shard.index])
  np.testing.assert_array_equal(_distributed.to_host(glob)["adv"], host["adv"])
  full = _distributed.global_from_host(host, bsh)
  np.testing.assert_array_equal(np.asarray(full["tokens"]), host["tokens"])
  with pytest.raises(ValueError, match=r"expected 8 rows"):
    _distributed.host_to_global({"x": np.zeros((4, 2))}, bsh, 8)
