"""Mesh construction and partition rules: every parameter gets the sharding the rules say."""

import re

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from postrain import models, sharding

# Hand-written expectation per parameter kind (logical axes -> mesh axes under the default rules).
EXPECTED = {
  "embedding": ("tensor", "fsdp"),
  "lm_head": ("fsdp", "tensor"),
  "attn/q": ("fsdp", "tensor", None),
  "attn/k": ("fsdp", "tensor", None),
  "attn/v": ("fsdp", "tensor", None),
  "attn/o": ("tensor", None, "fsdp"),
  "mlp/gate": ("fsdp", "tensor"),
  "mlp/up": ("fsdp", "tensor"),
  "mlp/down": ("tensor", "fsdp"),
  "norm/scale": (None,),
}


def _abstract_params(name, **overrides):
  cfg = models.get_config(name, **overrides)
  model = nnx.eval_shape(lambda: models.Decoder(cfg, rngs=nnx.Rngs(0)))
  return nnx.state(model, nnx.Param)


def _flat_specs(specs):
  leaves = jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, P))[0]
  out = {}
  for keys, spec in leaves:
    names = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in keys]
    out["/".join(n for n in names if n != "value")] = spec
  return out


def _expected(path):
  kinds = [k for k in EXPECTED if path == k or path.endswith("/" + k) or path.endswith("_" + k)]
  assert len(kinds) == 1, path
  return P(*EXPECTED[kinds[0]])


# -- make_mesh -------------------------------------------------------------------------------------


def test_make_mesh_sizes():
  assert dict(sharding.make_mesh({"data": 2, "fsdp": -1}).shape) == {
    "data": 2,
    "fsdp": 4,
    "tensor": 1,
  }
  assert dict(sharding.make_mesh({"tensor": 4, "data": 2}).shape) == {
    "data": 2,
    "fsdp": 1,
    "tensor": 4,
  }
  assert dict(sharding.make_mesh({"fsdp": -1}).shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": -1}, devices=jax.devices()[:2])
  assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 2}
  assert mesh.axis_names == ("data", "fsdp", "tensor")


def test_make_mesh_from_config_dict():
  import ml_collections as mlc

  cfg = mlc.ConfigDict({"data": -1, "fsdp": 2, "tensor": 1})
  assert dict(sharding.make_mesh(cfg).shape) == {"data": 4, "fsdp": 2, "tensor": 1}


@pytest.mark.parametrize(
  "cfg, match",
  [
    ({"data": 2, "fsdp": 2}, "has 4 devices, but there are 8"),
    ({"data": -1, "fsdp": -1}, r"\['data', 'fsdp'\] are both -1"),
    ({"data": 3, "fsdp": -1}, "'fsdp'=-1: the other axes' product 3"),
    ({"data": 0, "fsdp": -1}, "mesh axis 'data': size must be"),
    ({"pipeline": 2, "data": -1}, "mesh axis 'pipeline' is unknown"),
    ({"tensor": 2.0, "data": -1}, "mesh axis 'tensor': size must be"),
  ],
)
def test_make_mesh_errors(cfg, match):
  with pytest.raises(ValueError, match=match):
    sharding.make_mesh(cfg)


# -- rules -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny", "smollm2-135m"])
def test_every_parameter_gets_its_rule_sharding(name):
  params = _abstract_params(name)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4})  # tensor=1: any head count divides
  specs = _flat_specs(sharding.param_specs(params, mesh, sharding.default_rules()))
  n_layers = models.get_config(name).num_layers
  assert len(specs) == 2 + 9 * n_layers  # embedding, final norm, 9 per block (tied head)
  for path, spec in specs.items():
    assert spec == _expected(path), path
  shardings = sharding.param_shardings(params, mesh, sharding.default_rules())
  assert jax.tree.structure(shardings) == jax.tree.structure(params)
  for (keys, s), x in zip(
    jax.tree_util.tree_flatten_with_path(shardings)[0], jax.tree.leaves(params)
  ):
    path = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in keys[:-1])
    want = [d // (mesh.shape[a] if a else 1) for d, a in zip(x.shape, _expected(path))]
    assert s.shard_shape(x.shape) == tuple(want), path


def test_untied_head_and_qwen3_norms():
  params = _abstract_params("tiny-qwen3", tie_embeddings=False, num_layers=1)
  mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
  specs = _flat_specs(sharding.param_specs(params, mesh, sharding.default_rules()))
  assert specs["lm_head"] == P("fsdp", "tensor")
  assert specs["layers/0/attn/q_norm/scale"] == P(None)
  assert specs["embedding"] == P("tensor", "fsdp")


def test_parameter_without_rule_is_an_error():
  params = _abstract_params("tiny")
  rules = [r for r in sharding.default_rules() if "norm" not in r[0]]
  mesh = sharding.make_mesh({"fsdp": 8})
  with pytest.raises(
    ValueError, match=re.escape("parameter 'final_norm/scale' matches no sharding rule")
  ):
    sharding.param_specs(params, mesh, rules)


def test_conflicting_rules_are_an_error():
  params = _abstract_params("tiny")
  rules = [*sharding.default_rules(), (r"mlp/gate$", ("mlp", "embed"))]
  mesh = sharding.make_mesh({"fsdp": 8})
  with pytest.raises(
    ValueError, match=r"parameter 'layers/0/mlp/gate': conflicting sharding rules"
  ):
    sharding.param_specs(params, mesh, rules)


def test_agreeing_rules_are_fine():
  params = _abstract_params("tiny")
  rules = [*sharding.default_rules(), (r"^layers/\d+/mlp/gate$", ("embed", "mlp"))]
  mesh = sharding.make_mesh({"fsdp": 8})
  specs = _flat_specs(sharding.param_specs(params, mesh, rules))
  assert specs["layers/1/mlp/gate"] == P("fsdp", "tensor")


def test_indivisible_dimension_is_an_error_unless_allowed():
  params = _abstract_params("smollm2-135m")  # 9 heads, 3 KV heads
  mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
  with pytest.raises(
    ValueError, match=r"parameter 'layers/0/attn/k': dim 1 \('kv_heads', size 3\)"
  ):
    sharding.param_specs(params, mesh, sharding.default_rules())
  specs = _flat_specs(
    sharding.param_specs(params, mesh, sharding.default_rules(), allow_replication=True)
  )
  # Only the indivisible dimension is replicated; the rest keep their axes.
  assert specs["layers/0/attn/q"] == P("fsdp", None, None)
  assert specs["layers/0/attn/k"] == P("fsdp", None, None)
  assert specs["layers/0/attn/o"] == P(None, None, "fsdp")
  assert specs["layers/0/mlp/gate"] == P("fsdp", "tensor")  # 1536 / 2
  assert specs["embedding"] == P("tensor", "fsdp")


def test_rank_mismatch_and_unknown_logical_axis():
  params = _abstract_params("tiny")
  mesh = sharding.make_mesh({"fsdp": 8})
  bad_rank = [
    *[r for r in sharding.default_rules() if "mlp/down" not in r[0]],
    (r"mlp/down$", ("mlp",)),
  ]
  with pytest.raises(
    ValueError, match=r"'layers/0/mlp/down': 1 logical axes \('mlp',\) for an array of rank 2"
  ):
    sharding.param_specs(params, mesh, bad_rank)
  unknown = [
    *[r for r in sharding.default_rules() if "mlp/down" not in r[0]],
    (r"mlp/down$", ("ffw", "embed")),
  ]
  with pytest.raises(ValueError, match="logical axis 'ffw' has no logical->mesh rule"):
    sharding.param_specs(params, mesh, unknown)
  with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
    sharding.param_specs(params, mesh, sharding.default_rules(), logical_rules=[("embed", "model")])


def test_mesh_axis_used_twice_is_an_error():
  mesh = sharding.make_mesh({"fsdp": 8})
  with pytest.raises(ValueError, match=r"mesh axes \['fsdp'\] are used by two dimensions"):
    sharding.logical_to_spec(("embed", "embed"), (64, 64), mesh)


def test_batch_sharding_and_logical_override():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"))
  rules = [("batch", "data"), ("embed", None)]
  assert sharding.batch_sharding(mesh, rules).spec == P("data")
  assert sharding.logical_to_spec(("batch", "embed"), (4, 64), mesh, rules) == P("data", None)


def test_optimizer_state_mirrors_parameter_shardings():
  params = _abstract_params("tiny")
  mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
  p_sh = sharding.param_shardings(params, mesh, sharding.default_rules())
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
  abstract_opt = jax.eval_shape(tx.init, params)
  o_sh = sharding.opt_state_shardings(tx, abstract_opt, params, p_sh, mesh)
  adam = o_sh[1][0]
  assert adam.count.spec == P()
  for tree in (adam.mu, adam.nu):
    assert jax.tree.leaves(tree) == jax.tree.leaves(p_sh)
  assert len(jax.tree.leaves(o_sh)) == len(jax.tree.leaves(abstract_opt))


def test_from_config_reads_json_roundtripped_rules():
  import json

  import ml_collections as mlc

  cfg = mlc.ConfigDict()
  cfg.mesh = mlc.ConfigDict({"data": -1, "fsdp": 2, "tensor": 1})
  cfg.sharding_rules = json.loads(json.dumps(sharding.default_rules()))  # tuples became lists
  cfg.sharding_allow_replication = False
  mesh, kw = sharding.from_config(cfg)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  assert kw["rules"] == sharding.default_rules()
  specs = _flat_specs(sharding.param_specs(_abstract_params("tiny"), mesh, **kw))
  assert specs["layers/0/attn/o"] == P("tensor", None, "fsdp")


def test_constrain_is_identity_outside_the_context():
  x = np.ones((4, 8), np.float32)
  assert sharding.constrain(x, ("batch", "embed")) is x
