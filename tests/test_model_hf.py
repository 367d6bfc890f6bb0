"""from_hf_llama reproduces an independent NumPy LLaMA forward (also Qwen2's and biased LLaMAs'
biases, a head_dim other than hidden / heads, Mistral); export round-trips bit-exactly."""
import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lwm import sharding as shd
from lwm.model import from_hf_llama, hf, to_hf_llama

HF_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 97,
    "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
    "rope_theta": 500000.0, "max_position_embeddings": 256, "hidden_act": "silu",
    "tie_word_embeddings": False, "torch_dtype": "float32",
}


def random_checkpoint(path, config=HF_CONFIG, dtype=np.float32, seed=0, shard=True, biases=()):
  """A random LLaMA in HF's layout: [out, in] weights, split over two files with an index.

  biases: projections ("q_proj", "mlp.down_proj"...) that get a large random bias, as the
  family's modeling code would build them.
  """
  rng = np.random.default_rng(seed)
  d, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
  hd = config.get("head_dim") or d // config["num_attention_heads"]
  q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
  w = lambda *shape: (0.2 * rng.standard_normal(shape)).astype(dtype)
  tensors = {"model.embed_tokens.weight": w(v, d), "lm_head.weight": w(v, d),
             "model.norm.weight": (1 + w(d)).astype(dtype)}
  for i in range(config["num_hidden_layers"]):
    p = f"model.layers.{i}."
    tensors.update({
        p + "self_attn.q_proj.weight": w(q, d), p + "self_attn.k_proj.weight": w(kv, d),
        p + "self_attn.v_proj.weight": w(kv, d), p + "self_attn.o_proj.weight": w(d, q),
        p + "mlp.gate_proj.weight": w(f, d), p + "mlp.up_proj.weight": w(f, d),
        p + "mlp.down_proj.weight": w(d, f),
        p + "input_layernorm.weight": (1 + w(d)).astype(dtype),
        p + "post_attention_layernorm.weight": (1 + w(d)).astype(dtype)})
    for name in biases:
      weight = tensors[p + name + ".weight"]
      tensors[p + name + ".bias"] = (5 * w(weight.shape[0])).astype(dtype)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as fh:
    json.dump(config, fh)
  if not shard:
    save_file(tensors, os.path.join(path, "model.safetensors"))
    return tensors
  names = sorted(tensors)
  files = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
           "model-00002-of-00002.safetensors": names[len(names) // 2:]}
  for file, keys in files.items():
    save_file({k: tensors[k] for k in keys}, os.path.join(path, file))
  with open(os.path.join(path, "model.safetensors.index.json"), "w") as fh:
    json.dump({"metadata": {}, "weight_map": {k: f for f, ks in files.items() for k in ks}}, fh)
  return tensors


def numpy_llama(tensors, config, tokens):
  """Reference LLaMA forward in float64 NumPy, written from the HF modeling code's definitions."""
  t = {k: v.astype(np.float64) for k, v in tensors.items()}
  heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
  hd = config.get("head_dim") or config["hidden_size"] // heads
  eps, seq = config["rms_norm_eps"], tokens.shape[1]
  # nn.Linear: x @ W.T + b; a projection without a bias tensor has none.
  linear = lambda x, name: x @ t[name + ".weight"].T + t.get(name + ".bias", 0.0)

  def norm(x, w):
    return w * x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps)

  inv_freq = 1.0 / config["rope_theta"] ** (np.arange(0, hd, 2) / hd)
  angles = np.arange(seq)[:, None] * inv_freq[None]
  cos, sin = np.cos(np.concatenate([angles] * 2, -1)), np.sin(np.concatenate([angles] * 2, -1))

  def rope(x):  # x: [batch, heads, seq, hd]; HF: x * cos + rotate_half(x) * sin.
    rotated = np.concatenate([-x[..., hd // 2:], x[..., : hd // 2]], -1)
    return x * cos + rotated * sin

  x = t["model.embed_tokens.weight"][tokens]
  causal = np.tril(np.ones((seq, seq), bool))
  for i in range(config["num_hidden_layers"]):
    p = f"model.layers.{i}."
    h = norm(x, t[p + "input_layernorm.weight"])
    split = lambda y, n: y.reshape(*y.shape[:2], n, hd).transpose(0, 2, 1, 3)
    q = rope(split(linear(h, p + "self_attn.q_proj"), heads))
    k = rope(split(linear(h, p + "self_attn.k_proj"), kv_heads))
    v = split(linear(h, p + "self_attn.v_proj"), kv_heads)
    k, v = np.repeat(k, heads // kv_heads, 1), np.repeat(v, heads // kv_heads, 1)
    scores = np.where(causal, q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd), -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    o = (probs @ v).transpose(0, 2, 1, 3).reshape(*x.shape[:2], heads * hd)
    x = x + linear(o, p + "self_attn.o_proj")
    h = norm(x, t[p + "post_attention_layernorm.weight"])
    gate = linear(h, p + "mlp.gate_proj")
    x = x + linear((gate / (1 + np.exp(-gate))) * linear(h, p + "mlp.up_proj"),
                   p + "mlp.down_proj")
  return norm(x, t["model.norm.weight"]) @ t["lm_head.weight"].T


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("llama"))
  tensors = random_checkpoint(path)
  tokens = np.random.default_rng(1).integers(0, HF_CONFIG["vocab_size"], (2, 24)).astype(np.int32)
  return path, tensors, tokens, numpy_llama(tensors, HF_CONFIG, tokens)


def test_logits_match_numpy_llama(checkpoint):
  path, _, tokens, expected = checkpoint
  model = from_hf_llama(path)
  assert model.config.rope_theta == 500000.0 and model.config.num_kv_heads == 2
  logits = jax.jit(lambda m, t: m(t))(model, jnp.asarray(tokens))
  assert logits.shape == (2, 24, HF_CONFIG["vocab_size"])
  np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("mesh_sizes", [(1, 1, 2, 4), (2, 1, 1, 4)])
def test_sharded_forward_equals_unsharded(checkpoint, mesh_sizes):
  path, _, tokens, expected = checkpoint
  mesh = shd.make_mesh(*mesh_sizes)
  model = from_hf_llama(path, mesh=mesh)
  assert model.layers.wq[...].sharding.mesh.shape == mesh.shape
  unsharded = jax.jit(lambda m, t: m(t))(from_hf_llama(path), jnp.asarray(tokens))
  sharded = jax.jit(lambda m, t: m(t))(model, jnp.asarray(tokens))
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(unsharded), atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(sharded), expected, atol=1e-4, rtol=0)


def test_uneven_length_is_padded_internally(checkpoint):
  path, _, tokens, expected = checkpoint
  model = from_hf_llama(path, mesh=shd.make_mesh(1, 1, 1, 8))
  logits = model(jnp.asarray(tokens[:, :13]))  # 13 is no multiple of 2 * sp = 16.
  np.testing.assert_allclose(np.asarray(logits), expected[:, :13], atol=1e-4, rtol=0)


def test_export_round_trip_is_exact(checkpoint, tmp_path):
  path, tensors, _, _ = checkpoint
  to_hf_llama(from_hf_llama(path, mesh=shd.make_mesh(1, 2, 2, 2)), str(tmp_path))
  exported = load_file(str(tmp_path / "model.safetensors"))
  assert sorted(exported) == sorted(tensors)
  for name, value in tensors.items():
    assert exported[name].dtype == value.dtype
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
  with open(tmp_path / "config.json") as fh:
    config = json.load(fh)
  for key in ("rope_theta", "num_key_value_heads", "rms_norm_eps", "num_hidden_layers"):
    assert config[key] == HF_CONFIG[key]


def test_bfloat16_round_trip_through_float32_params_is_exact(tmp_path):
  src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
  tensors = random_checkpoint(src, dtype=ml_dtypes.bfloat16, shard=False)
  model = from_hf_llama(src, dtype=jnp.float32, vision_vocab_size=0)
  to_hf_llama(model, dst, dtype=ml_dtypes.bfloat16, max_shard_bytes=20_000)
  assert os.path.exists(os.path.join(dst, "model.safetensors.index.json"))
  again = from_hf_llama(dst, dtype=jnp.float32, vision_vocab_size=0)
  for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(again)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  from lwm.model.hf import read_checkpoint
  written = read_checkpoint(dst)
  for name, value in tensors.items():
    np.testing.assert_array_equal(written[name].read().view(np.uint16), value.view(np.uint16),
                                  err_msg=name)


ATTENTION = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
# model_type and its fields -> the biases its modeling code builds.
FAMILIES = {
    "qwen2": ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
               "use_sliding_window": False, "sliding_window": 4096}, ATTENTION),
    "llama-biased": ({"attention_bias": True, "mlp_bias": True, "head_dim": 32},
                     ATTENTION + ("self_attn.o_proj",) + MLP),
    "mistral": ({"model_type": "mistral", "architectures": ["MistralForCausalLM"],
                 "head_dim": 16, "sliding_window": 64}, ()),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_checkpoint(request, tmp_path_factory):
  fields, biases = FAMILIES[request.param]
  config = {**HF_CONFIG, **fields}
  path = str(tmp_path_factory.mktemp(request.param))
  tensors = random_checkpoint(path, config, biases=biases)
  tokens = np.random.default_rng(2).integers(0, config["vocab_size"], (2, 24)).astype(np.int32)
  return path, tensors, tokens, numpy_llama(tensors, config, tokens)


@pytest.mark.parametrize("mesh_sizes", [None, (1, 2, 2, 2)])
def test_family_logits_match_numpy(family_checkpoint, mesh_sizes):
  """Biases before RoPE, head_dim 32 with hidden 48 / 4 heads, on one device and sharded."""
  path, _, tokens, expected = family_checkpoint
  mesh = None if mesh_sizes is None else shd.make_mesh(*mesh_sizes)
  model = from_hf_llama(path, mesh=mesh, vision_vocab_size=0)
  logits = jax.jit(lambda m, t: m(t))(model, jnp.asarray(tokens))
  np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4, rtol=0)


def test_family_export_round_trip_is_exact(family_checkpoint, tmp_path):
  path, tensors, _, _ = family_checkpoint
  to_hf_llama(from_hf_llama(path, mesh=shd.make_mesh(1, 2, 2, 2)), str(tmp_path))
  exported = load_file(str(tmp_path / "model.safetensors"))
  assert sorted(exported) == sorted(tensors)
  for name, value in tensors.items():
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
  with open(path + "/config.json") as fh, open(tmp_path / "config.json") as gh:
    source, written = json.load(fh), json.load(gh)
  assert written["model_type"] == source["model_type"]
  assert hf.config_from_hf(written) == hf.config_from_hf(source)  # biases, head_dim, window
