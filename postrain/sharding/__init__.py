"""Device meshes, partition rules and sharded jits (big_vision style: the rules live in the config).

A parameter's placement is decided in two steps, both plain data that a config can hold:

  sharding_rules:      [(regex on the '/'-joined parameter path, logical axes)]
                       e.g. ("attn/q$", ("embed", "heads", "head_dim"))
  logical_axis_rules:  [(logical axis, mesh axis | tuple of mesh axes | None)]
                       e.g. ("embed", "fsdp"), ("heads", "tensor"), ("batch", ("data", "fsdp"))

The mesh has the axes `("data", "fsdp", "tensor")`: the batch is split over data x fsdp, the
parameters' embed (largest) dimension over fsdp (ZeRO-3 style: each device stores 1/fsdp of the
weights and optimiser state, gathered per layer when used), heads / MLP width / vocabulary over
tensor (Megatron-style tensor parallelism). Sizes of 1 turn an axis off.

  mesh = sharding.make_mesh({"data": 2, "fsdp": -1, "tensor": 1})
  state = sharding.init_sharded(lambda: models.Decoder(cfg, rngs=nnx.Rngs(0)), tx, mesh,
                                sharding.default_rules())
  update = sharding.shard_update(train.make_update(loss_fn, tx, state.graphdef, state.rest),
                                 state.param_shardings, state.opt_shardings,
                                 sharding.batch_sharding(mesh))
"""

from postrain.sharding._jit import (
  activation_sharding,
  check_batch,
  constrain,
  shard_batch_fn,
  shard_logprob_fn,
  shard_state_update,
  shard_update,
)
from postrain.sharding._mesh import BATCH_AXES, MESH_AXES, make_mesh, replicated
from postrain.sharding._place import ShardedState, abstract_target, init_sharded, place_params
from postrain.sharding._rules import (
  LogicalRule,
  Rule,
  batch_sharding,
  default_logical_axis_rules,
  default_rules,
  from_config,
  logical_to_spec,
  match_rules,
  opt_state_shardings,
  param_shardings,
  param_specs,
)
from postrain.sharding._sharded_sampler import ShardedSampler, sampler_shardings

__all__ = [
  "BATCH_AXES",
  "MESH_AXES",
  "LogicalRule",
  "Rule",
  "ShardedSampler",
  "ShardedState",
  "abstract_target",
  "activation_sharding",
  "batch_sharding",
  "check_batch",
  "constrain",
  "default_logical_axis_rules",
  "default_rules",
  "from_config",
  "init_sharded",
  "logical_to_spec",
  "make_mesh",
  "match_rules",
  "opt_state_shardings",
  "param_shardings",
  "param_specs",
  "place_params",
  "replicated",
  "sampler_shardings",
  "shard_batch_fn",
  "shard_logprob_fn",
  "shard_state_update",
  "shard_update",
]
