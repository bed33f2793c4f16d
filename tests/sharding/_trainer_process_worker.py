"""One process of a trainer run: `python _trainer_process_worker.py PORT PROCESS_ID NUM_PROCESSES
WORKDIR [OVERRIDES_JSON]`. With 2 processes (2 CPU devices each) they form a (data=2, fsdp=2) mesh;
with 1 process it is the one-device reference. OVERRIDES_JSON: a JSON list of [key, value] config
overrides applied after the defaults below (["eos_heavy", true]: the head's EOS column scaled after
the trainer is built, `trainer_case.make_eos_heavy`). Writes `done_{pid}.json` with the problems this process
loaded.
"""

import json
import os
import sys

NUM_PROCESSES = int(sys.argv[3])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={2 if NUM_PROCESSES > 1 else 1}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update(
  "jax_compilation_cache_dir", os.path.join(os.path.dirname(__file__), "..", "..", ".jax_cache")
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

sys.path.insert(0, os.path.dirname(__file__))

import trainer_case as case  # noqa: E402

from postrain import train  # noqa: E402
from postrain.train import _distributed  # noqa: E402

# One SFT step, two RL steps (two minibatch updates each) with a KL reference: every per-process
# path of the step (SFT rows, rollout rows, reference log-probs, minibatches on the mesh).
OVERRIDES = (
  *(kv for kv in case.OVERRIDES if kv[0] not in ("sft.steps", "rl.steps", "checkpoint.every")),
  ("sft.steps", 1),
  ("rl.steps", 2),
  ("checkpoint.every", 3),
)


def main(port: int, pid: int, num: int, workdir: str, extra: list) -> None:
  mesh = {}
  if num > 1:
    assert _distributed.initialize_distributed(
      {"coordinator_address": f"localhost:{port}", "num_processes": num, "process_id": pid}
    )
    mesh = {"data": 2, "fsdp": 2}
  eos_heavy = ["eos_heavy", True] in extra  # not a config key: scale the head's EOS column
  overrides = (*OVERRIDES, *(tuple(kv) for kv in extra if kv[0] != "eos_heavy"))
  trainer = train.Trainer(case.config(overrides, **mesh), os.path.join(workdir, "run"))
  if eos_heavy:
    case.make_eos_heavy(trainer)
  trainer.run()
  log = [[step, kind, ids] for step, kind, ids in trainer.problem_log]
  with open(os.path.join(workdir, f"done_{pid}.json"), "w") as f:
    json.dump({"problem_log": log, "devices": jax.device_count()}, f)
  if num > 1:
    jax.distributed.shutdown()


if __name__ == "__main__":
  extra = json.loads(sys.argv[5]) if len(sys.argv) > 5 else []
  main(int(sys.argv[1]), int(sys.argv[2]), NUM_PROCESSES, sys.argv[4], extra)
