"""One process of the two-process test: `python _two_process_worker.py PORT PROCESS_ID WORKDIR`.

Each process has 2 CPU devices; together they form a (data=2, fsdp=2) mesh. Every process builds the
same step batch (a function of the seed), keeps its own rows, trains two RL updates and writes one
orbax checkpoint together with the other process.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax

# The suite's persistent compilation cache (as tests/conftest.py sets it).
jax.config.update(
  "jax_compilation_cache_dir", os.path.join(os.path.dirname(__file__), "..", "..", ".jax_cache")
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

sys.path.insert(0, os.path.dirname(__file__))

import sharding_case as case  # noqa: E402

from postrain import sharding  # noqa: E402
from postrain.train import _checkpoint, _distributed  # noqa: E402


def main(port: int, pid: int, workdir: str) -> None:
  multi = _distributed.initialize_distributed(
    {
      "distributed": {
        "coordinator_address": f"localhost:{port}",
        "num_processes": 2,
        "process_id": pid,
      }
    }
  )
  assert multi and jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
  mesh = sharding.make_mesh({"data": 2, "fsdp": -1})
  tx = case.optimizer()
  state = sharding.init_sharded(case.factory, tx, mesh, sharding.default_rules())
  bsh = sharding.batch_sharding(mesh)
  update = sharding.shard_update(
    case.rl_update(state.graphdef, state.rest, tx), state.param_shardings, state.opt_shardings, bsh
  )
  logprobs = sharding.shard_logprob_fn(
    case.logprob_fn(state.graphdef, state.rest), state.param_shardings, bsh
  )
  params, opt_state = state.params, state.opt_state
  rows = _distributed.local_rows(bsh, case.BATCH)
  losses = []
  for step in range(2):
    # Every process builds the same step data and keeps its own rows.
    x = _distributed.host_to_global(
      {k: v[rows] for k, v in case.inputs(step).items()}, bsh, case.BATCH
    )
    logp = _distributed.to_host(logprobs(params, x["tokens"], x["mask"], x["valid"]))
    full = case.batch(step, logp)
    batch = _distributed.host_to_global({k: v[rows] for k, v in full.items()}, bsh, case.BATCH)
    params, opt_state, aux = update(params, opt_state, batch, case.margin())
    losses.append(float(_distributed.to_host(aux["loss"])))
  ckpt = _checkpoint.Checkpointer(os.path.join(workdir, "ckpt"), every=1, keep=1)
  ckpt.maybe_save(2, {"params": params, "opt_state": opt_state}, {"losses": losses}, force=True)
  ckpt.close()
  with open(os.path.join(workdir, f"done_{pid}.json"), "w") as f:
    json.dump({"losses": losses, "rows": [rows.start, rows.stop]}, f)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
