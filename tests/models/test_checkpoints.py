"""Weight import/export without transformers: safetensors files, HF directories, GGUF files."""

import json
import os

import gguf
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from model_testutil import left_padded_batch, make_model, params_np

from postrain import models
from postrain.models import _gguf, _gguf_file, _hf, _safetensors


def _assert_same_params(a, b, atol=0.0):
  pa, pb = params_np(a), params_np(b)
  assert pa.keys() == pb.keys()
  for k in pa:
    np.testing.assert_allclose(pa[k], pb[k], atol=atol, err_msg=k)


# --- safetensors -------------------------------------------------------------------------------


def test_safetensors_roundtrip_with_bfloat16_and_the_reference_reader(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {
    "a": rng.standard_normal((3, 5)).astype(np.float32),
    "b": rng.standard_normal((4,)).astype(ml_dtypes.bfloat16),
    "c": np.arange(6, dtype=np.int32).reshape(2, 3),
  }
  path = tmp_path / "x.safetensors"
  _safetensors.save_file([(k, v.shape, v.dtype, lambda v=v: v) for k, v in arrays.items()], path)
  f = _safetensors.SafetensorsFile(path)
  assert set(f.names()) == set(arrays) and f.shape("a") == (3, 5)
  for k, v in arrays.items():
    np.testing.assert_array_equal(f.get(k), v)
    assert f.get(k).dtype == v.dtype
  # the `safetensors` package reads our non-bf16 tensors and we read its files
  ref = tmp_path / "ref.safetensors"
  safetensors.numpy.save_file({"a": arrays["a"], "c": arrays["c"]}, str(ref))
  np.testing.assert_array_equal(_safetensors.SafetensorsFile(ref).get("a"), arrays["a"])
  with safetensors.safe_open(str(path), framework="np") as g:
    np.testing.assert_array_equal(g.get_tensor("c"), arrays["c"])


# --- HF directories ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory, tiny_qwen3):
  cfg, model = tiny_qwen3
  path = tmp_path_factory.mktemp("qwen3")
  models.save_hf_dir(model, cfg, path)
  return path


def test_save_then_load_hf_dir_is_exact(qwen3_dir, tiny_qwen3, jit_forward):
  cfg, model = tiny_qwen3
  cfg2, model2 = models.from_hf_dir(qwen3_dir)
  assert cfg2.replace(attention_block=cfg.attention_block) == cfg
  _assert_same_params(model, model2)
  hf = json.loads((qwen3_dir / "config.json").read_text())
  assert hf["model_type"] == "qwen3" and hf["architectures"] == ["Qwen3ForCausalLM"]
  assert hf["rope_scaling"]["rope_type"] == "llama3" and hf["tie_word_embeddings"] is False


def test_load_sharded_checkpoint_with_index(tmp_path, qwen3_dir, tiny_qwen3):
  _cfg, model = tiny_qwen3
  single = _safetensors.SafetensorsFile(qwen3_dir / "model.safetensors")
  names = single.names()
  shards = {
    "model-00001-of-00002.safetensors": names[::2],
    "model-00002-of-00002.safetensors": names[1::2],
  }
  weight_map = {}
  for shard, shard_names in shards.items():
    entries = [
      (n, single.shape(n), single.get(n).dtype, lambda n=n: single.get(n)) for n in shard_names
    ]
    _safetensors.save_file(entries, tmp_path / shard)
    weight_map.update({n: shard for n in shard_names})
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  (tmp_path / "config.json").write_text((qwen3_dir / "config.json").read_text())
  _, model2 = models.from_hf_dir(tmp_path)
  _assert_same_params(model, model2)


def test_bfloat16_export_and_import(tmp_path, tiny_llama):
  cfg, model = tiny_llama
  models.save_hf_dir(model, cfg, tmp_path, dtype="bfloat16")
  assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
  assert (
    _safetensors.SafetensorsFile(tmp_path / "model.safetensors").get("model.norm.weight").dtype
    == ml_dtypes.bfloat16
  )
  cfg16, model16 = models.from_hf_dir(tmp_path, dtype="bfloat16")
  assert cfg16.param_dtype == "bfloat16" and model16.embedding.dtype == jnp.bfloat16
  _, model32 = models.from_hf_dir(tmp_path, dtype="float32", param_dtype="float32")
  _assert_same_params(model, model32, atol=0.01)  # bf16 rounding of |w| < ~1


def _write_dir(src, dst, config=None, drop=(), rename=None, add=None):
  os.makedirs(dst, exist_ok=True)
  hf = json.loads((src / "config.json").read_text())
  hf.update(config or {})
  (dst / "config.json").write_text(json.dumps(hf))
  f = _safetensors.SafetensorsFile(src / "model.safetensors")
  entries = [(rename.get(n, n) if rename else n, f.shape(n), f.get(n).dtype, lambda n=n: f.get(n))
             for n in f.names() if n not in drop]  # fmt: skip
  for name, value in (add or {}).items():
    entries.append((name, value.shape, value.dtype, lambda v=value: v))
  _safetensors.save_file(entries, dst / "model.safetensors")


def test_mismatched_checkpoints_name_the_tensor(tmp_path, qwen3_dir):
  _write_dir(qwen3_dir, tmp_path / "a", drop=["model.layers.1.mlp.up_proj.weight"])
  with pytest.raises(ValueError, match=r"lacks tensor 'model.layers.1.mlp.up_proj.weight'"):
    models.from_hf_dir(tmp_path / "a")
  _write_dir(qwen3_dir, tmp_path / "b", config={"intermediate_size": 100})
  with pytest.raises(
    ValueError, match=r"tensor 'model.layers.0.mlp.gate_proj.weight' has shape \(128, 64\)"
  ):
    models.from_hf_dir(tmp_path / "b")
  _write_dir(
    qwen3_dir,
    tmp_path / "c",
    add={"model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)},
  )
  with pytest.raises(ValueError, match=r"q_proj.bias"):
    models.from_hf_dir(tmp_path / "c")
  _write_dir(qwen3_dir, tmp_path / "d", config={"model_type": "gpt2"})
  with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
    models.from_hf_dir(tmp_path / "d")
  _write_dir(
    qwen3_dir, tmp_path / "e", config={"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}
  )
  with pytest.raises(ValueError, match="'yarn' is not supported"):
    models.from_hf_dir(tmp_path / "e")
  with pytest.raises(FileNotFoundError):
    models.from_hf_dir(tmp_path / "nothing-here")


def test_config_from_hf_reads_v4_and_v5_rope_keys():
  base = dict(model_type="llama", vocab_size=10, num_hidden_layers=1, hidden_size=8,
              num_attention_heads=2, intermediate_size=16)  # fmt: skip
  scaling = dict(
    factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
  )
  v4 = models.config_from_hf(
    {**base, "rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", **scaling}}
  )
  v5 = models.config_from_hf(
    {**base, "rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", **scaling}}
  )
  assert (
    v4 == v5
    and v4.rope_theta == 5e5
    and v4.rope_scaling == models.RopeScaling(32.0, 1.0, 4.0, 8192)
  )
  assert v4.num_kv_heads == 2 and v4.head_dim == 4 and v4.tie_embeddings is False
  plain = models.config_from_hf(
    {**base, "rope_parameters": {"rope_theta": 1e4, "rope_type": "default"}}
  )
  assert plain.rope_scaling is None
  assert models.config_from_hf({**base, "eos_token_id": [7, 8]}).eos_token_id == 7
  with pytest.raises(ValueError, match="hidden_act"):
    models.config_from_hf({**base, "hidden_act": "gelu"})
  assert models.config_from_hf(models.config_to_hf(v4)) == v4


# --- GGUF ----------------------------------------------------------------------------------------


def test_qk_permutation_inverts_llama_cpp_order():
  rng = np.random.default_rng(0)
  w = rng.standard_normal((3 * 8, 5))
  g = _gguf.permute_qk(w, 3)
  np.testing.assert_array_equal(_gguf.unpermute_qk(g, 3), w)
  # llama.cpp interleaves the two rotary halves of each head: row j of half 0 -> 2j, of half 1 -> 2j + 1
  head = w[8:16]
  np.testing.assert_array_equal(g[8:16][0::2], head[:4])
  np.testing.assert_array_equal(g[8:16][1::2], head[4:])


def _write_gguf(path, cfg, model, quant):
  writer = gguf.GGUFWriter(str(path), "llama")
  writer.add_block_count(cfg.num_layers)
  writer.add_context_length(cfg.max_position_embeddings)
  writer.add_embedding_length(cfg.embed_dim)
  writer.add_feed_forward_length(cfg.mlp_dim)
  writer.add_head_count(cfg.num_heads)
  writer.add_head_count_kv(cfg.num_kv_heads)
  writer.add_rope_freq_base(cfg.rope_theta)
  writer.add_layer_norm_rms_eps(cfg.norm_eps)
  writer.add_vocab_size(cfg.vocab_size)
  for spec in _hf.hf_tensor_specs(cfg):
    w = spec.to_theirs(np.asarray(_hf.get_param(model, spec.path)[...], np.float32))
    name = _gguf.gguf_name(spec.name)
    if name.endswith("attn_q.weight"):
      w = _gguf.permute_qk(w, cfg.num_heads)
    elif name.endswith("attn_k.weight"):
      w = _gguf.permute_qk(w, cfg.num_kv_heads)
    if w.ndim == 2 and quant is not None:
      writer.add_tensor(name, gguf.quants.quantize(w, quant), raw_dtype=quant)
    else:
      writer.add_tensor(name, np.ascontiguousarray(w))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


@pytest.mark.parametrize("quant,atol", [(None, 0.0), (gguf.GGMLQuantizationType.F16, 1e-3),
                                        (gguf.GGMLQuantizationType.Q8_0, 0.01)])  # fmt: skip
def test_gguf_import(tmp_path, tiny_llama, jit_forward, quant, atol):
  cfg, model = tiny_llama
  _write_gguf(tmp_path / "m.gguf", cfg, model, quant)
  cfg2, model2 = models.from_gguf(tmp_path / "m.gguf")
  assert cfg2.replace(attention_block=4, max_position_embeddings=cfg.max_position_embeddings) == cfg.replace(
      norm_eps=cfg2.norm_eps)  # fmt: skip
  _assert_same_params(model, model2, atol=atol)
  if quant is None:
    tokens, valid, positions = left_padded_batch(0, 2, 7, cfg.vocab_size, (0, 2))
    np.testing.assert_allclose(
        np.asarray(jit_forward(model2, tokens, positions, valid)),
        np.asarray(jit_forward(model, tokens, positions, valid)), atol=1e-6)  # fmt: skip


def test_gguf_missing_tensor_is_named(tmp_path):
  cfg = models.get_config("tiny", num_layers=1)
  model = make_model(cfg, 5)
  writer = gguf.GGUFWriter(str(tmp_path / "bad.gguf"), "llama")
  for key, value in [("block_count", 1), ("embedding_length", 64), ("feed_forward_length", 128),
                     ("attention.head_count", 4), ("attention.head_count_kv", 2), ("vocab_size", 512)]:  # fmt: skip
    writer.add_uint32(f"llama.{key}", value)
  writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-6)
  writer.add_tensor("token_embd.weight", np.asarray(model.embedding[...]))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  with pytest.raises(ValueError, match=r"lacks tensor 'blk\.0\.attn_norm\.weight'"):
    models.from_gguf(tmp_path / "bad.gguf")


def test_fast_gguf_reader_agrees_with_gguf_reader(tmp_path, tiny_llama):
  cfg, model = tiny_llama
  path = tmp_path / "m.gguf"
  _write_gguf(path, cfg, model, gguf.GGMLQuantizationType.Q8_0)
  ref = gguf.GGUFReader(str(path))
  ours = _gguf_file.GGUFFile(path)
  want = {k: f.contents() for k, f in ref.fields.items() if not k.startswith("GGUF.")}
  assert ours.metadata.keys() == want.keys()
  for k, v in want.items():
    assert (
      ours.metadata[k] == pytest.approx(v) if isinstance(v, float) else ours.metadata[k] == v
    ), k
  assert set(ours.tensors) == {t.name for t in ref.tensors}
  for t in ref.tensors:
    np.testing.assert_array_equal(
      ours.dequantize(t.name), gguf.quants.dequantize(t.data, t.tensor_type)
    )


def test_fast_gguf_reader_metadata_types(tmp_path):
  writer = gguf.GGUFWriter(str(tmp_path / "kv.gguf"), "llama")
  writer.add_string("s", "héllo")
  writer.add_array("strings", ["a", "bc", "東京"])
  writer.add_array("ints", [1, -2, 3])
  writer.add_array("floats", [0.5, 1.5])
  writer.add_bool("flag", True)
  writer.add_uint64("big", 2**40)
  writer.add_float64("f64", 0.125)
  writer.add_int8("i8", -3)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  meta = _gguf_file.GGUFFile(tmp_path / "kv.gguf").metadata
  assert meta["s"] == "héllo" and meta["strings"] == ["a", "bc", "東京"]
  assert meta["ints"] == [1, -2, 3] and meta["floats"] == [0.5, 1.5]
  assert meta["flag"] is True and meta["big"] == 2**40 and meta["f64"] == 0.125 and meta["i8"] == -3
  assert meta["general.architecture"] == "llama"
  (tmp_path / "no.gguf").write_bytes(b"GGML" + bytes(40))
  with pytest.raises(ValueError, match="not a GGUF file"):
    _gguf_file.GGUFFile(tmp_path / "no.gguf")
