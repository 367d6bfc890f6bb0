"""Checkpoints written by transformers 5.24 itself reproduce the logits transformers computed.

tests/fixtures/hf/ (see its README): rope_parameters with no top-level rope_theta, Llama 3.1 RoPE
scaling, and a tied-embedding MHA model stored as pytorch_model.bin. The reference is
transformers' own float32 forward, saved next to each checkpoint.
"""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwm import sharding as shd
from lwm.model import from_hf_llama, hf, to_hf_llama
from lwm.model import weights

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hf")
NAMES = ("llama-rope-parameters", "llama3-rope-scaling", "llama-tied-mha")


def fixture(name):
  path = os.path.join(FIXTURES, name)
  io = np.load(os.path.join(path, "io.npz"))
  return path, io["tokens"], io["logits"]


def logits_of(path, tokens, **kwargs):
  model = from_hf_llama(path, vision_vocab_size=0, **kwargs)
  return np.asarray(jax.jit(lambda m, t: m(t))(model, jnp.asarray(tokens)))


@pytest.mark.parametrize("name", NAMES)
def test_reproduces_transformers_logits(name):
  path, tokens, expected = fixture(name)
  model = from_hf_llama(path, vision_vocab_size=0)
  logits = jax.jit(lambda m, t: m(t))(model, jnp.asarray(tokens))
  np.testing.assert_allclose(np.asarray(logits), expected, atol=2e-4, rtol=0)


def test_fixture_settings_are_read_not_defaulted():
  theta = lambda n: hf.config_from_hf(json.load(open(os.path.join(FIXTURES, n, "config.json"))))
  assert theta("llama-rope-parameters").rope_theta == 50000.0
  llama3 = theta("llama3-rope-scaling")
  assert llama3.rope_theta == 500000.0 and dict(llama3.rope_scaling)["rope_type"] == "llama3"


def llama3_reference(head_dim, theta, factor, low, high, original):
  """Llama 3.1's frequency rule in float64, one frequency at a time (Meta's `apply_scaling`)."""
  out = []
  for i in range(0, head_dim, 2):
    freq = 1.0 / theta ** (i / head_dim)
    wavelength = 2 * np.pi / freq
    if wavelength < original / high:
      out.append(freq)
    elif wavelength > original / low:
      out.append(freq / factor)
    else:
      smooth = (original / wavelength - low) / (high - low)
      out.append((1 - smooth) * freq / factor + smooth * freq)
  return np.array(out)


@pytest.mark.parametrize("original", [16, 8192])
def test_llama3_frequencies_match_the_reference(original):
  from lwm.model import rope
  scaling = rope.normalize_scaling({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": original})
  ours = np.asarray(rope.inverse_frequencies(128, 500000.0, scaling))
  expected = llama3_reference(128, 500000.0, 8.0, 1.0, 4.0, original)
  np.testing.assert_allclose(ours, expected, rtol=1e-5)
  plain = np.asarray(rope.inverse_frequencies(128, 500000.0))
  if original == 8192:  # Llama 3.1's own setting reaches all three bands at head_dim 128.
    assert (ours < plain * 0.99).sum() > 10 and (ours == plain).sum() > 10
  linear = rope.normalize_scaling({"rope_type": "linear", "factor": 4.0})
  np.testing.assert_allclose(np.asarray(rope.inverse_frequencies(128, 1e4, linear)),
                             1e4 ** -(np.arange(0, 128, 2) / 128) / 4, rtol=1e-5)


def rewrite_config(src, dst, change):
  shutil.copytree(src, dst)
  os.chmod(os.path.join(dst, "config.json"), 0o644)
  with open(os.path.join(src, "config.json")) as f:
    config = json.load(f)
  change(config)
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(config, f)
  return str(dst)


def as_transformers4(config):
  """The same model written as transformers 4.x writes it: top-level rope_theta + rope_scaling."""
  params = config.pop("rope_parameters")
  config["rope_theta"] = params.pop("rope_theta")
  config["rope_scaling"] = None if params["rope_type"] == "default" else params


def test_transformers4_layout_of_the_same_model(tmp_path):
  path, tokens, expected = fixture("llama3-rope-scaling")
  old = rewrite_config(path, tmp_path / "v4", as_transformers4)
  np.testing.assert_allclose(logits_of(old, tokens), expected, atol=2e-4, rtol=0)


def test_streamed_per_layer_on_a_mesh(monkeypatch):
  """The path a 7B import takes (each layer written into a donated device buffer), sharded."""
  monkeypatch.setattr(hf, "STACK_ON_HOST_BYTES", 0)
  path, tokens, expected = fixture("llama3-rope-scaling")
  model_logits = logits_of(path, tokens, mesh=shd.make_mesh(1, 2, 2, 2))
  np.testing.assert_allclose(model_logits, expected, atol=2e-4, rtol=0)


def test_sharded_pytorch_bin(tmp_path):
  """The .bin fixture split into two files with pytorch_model.bin.index.json, as HF shards."""
  path, tokens, expected = fixture("llama-tied-mha")
  tensors = {k: v.read() for k, v in weights.read_pytorch_bin(
      os.path.join(path, "pytorch_model.bin")).items()}
  names = sorted(tensors)
  files = {"pytorch_model-00001-of-00002.bin": names[:7],
           "pytorch_model-00002-of-00002.bin": names[7:]}
  os.makedirs(tmp_path / "sharded")
  for file, keys in files.items():
    weights.write_pytorch_bin(str(tmp_path / "sharded" / file), {k: tensors[k] for k in keys})
  with open(tmp_path / "sharded" / "pytorch_model.bin.index.json", "w") as f:
    json.dump({"metadata": {}, "weight_map": {k: f for f, ks in files.items() for k in ks}}, f)
  shutil.copy(os.path.join(path, "config.json"), tmp_path / "sharded")
  np.testing.assert_allclose(logits_of(str(tmp_path / "sharded"), tokens), expected, atol=2e-4,
                             rtol=0)


def test_export_then_import_gives_the_same_logits(tmp_path):
  path, tokens, expected = fixture("llama3-rope-scaling")
  to_hf_llama(from_hf_llama(path, vision_vocab_size=0), str(tmp_path))
  np.testing.assert_allclose(logits_of(str(tmp_path), tokens), expected, atol=2e-4, rtol=0)
  with open(tmp_path / "config.json") as f:
    written = json.load(f)
  # transformers 4.x reads rope_theta + rope_scaling; 5.x reads rope_parameters.
  as_dict = written["rope_scaling"] or {"rope_type": "default"}
  assert written["rope_parameters"] == {**as_dict, "rope_theta": written["rope_theta"]}


def untie_without_head(config):
  config["tie_word_embeddings"] = False


# Biases, head_dim, qwen2 and mistral are read (tests/test_model_hf_families.py); these are not.
REFUSED = [
    ("hidden_act", "gelu"), ("partial_rotary_factor", 0.5), ("model_type", "gemma2"),
    ("quantization_config", {"quant_method": "gptq", "bits": 4}), ("attention_bias", "yes"),
]


@pytest.mark.parametrize("field,value", REFUSED)
def test_unimplemented_fields_are_refused_by_name(field, value):
  with open(os.path.join(FIXTURES, "llama-rope-parameters", "config.json")) as f:
    config = json.load(f)
  with pytest.raises(ValueError, match=field):
    hf.config_from_hf({**config, field: value})


ROPE_REFUSED = [
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "yarn"),
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, "dynamic"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}, "rope_theta": 5e5},
     "rope_theta"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0},
      "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}, "disagree"),
    ({"rope_scaling": {"rope_type": "linear"}, "rope_theta": 1e4}, "factor"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0, "attention_factor": 1.2}},
     "attention_factor"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                          "partial_rotary_factor": 0.5}}, "partial_rotary_factor"),
]


@pytest.mark.parametrize("rope,message", ROPE_REFUSED)
def test_unimplemented_rope_settings_are_refused(rope, message):
  with open(os.path.join(FIXTURES, "llama-rope-parameters", "config.json")) as f:
    config = json.load(f)
  config.pop("rope_parameters")
  with pytest.raises(ValueError, match=message):
    hf.config_from_hf({**config, **rope})


def test_missing_head_with_untied_embeddings_is_refused(tmp_path):
  path, _, _ = fixture("llama-tied-mha")
  with pytest.raises(KeyError, match="tie_word_embeddings"):
    from_hf_llama(rewrite_config(path, tmp_path / "untied", untie_without_head),
                  vision_vocab_size=0)


def test_linear_scaling_in_the_old_type_spelling():
  config = hf.config_from_hf({"vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
                              "num_hidden_layers": 1, "num_attention_heads": 2,
                              "rope_theta": 1e4, "rope_scaling": {"type": "linear", "factor": 4}})
  assert dict(config.rope_scaling) == {"rope_type": "linear", "factor": 4}


@pytest.mark.parametrize("scaling", [(), {"rope_type": "linear", "factor": 4.0},
                                     {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 8192}])
def test_exported_config_reads_the_same_in_installed_transformers(scaling, tmp_path):
  """Runs where transformers is installed (4.x or 5.x; not a dependency): its LlamaConfig reads
  our exported RoPE back as we wrote it."""
  transformers = pytest.importorskip("transformers")
  from lwm.model import get_config
  config = get_config("tiny", rope_theta=5e5, rope_scaling=scaling, max_sequence_length=131072)
  with open(tmp_path / "config.json", "w") as f:
    json.dump(hf.hf_config(config, "float32"), f)
  read = transformers.LlamaConfig.from_pretrained(str(tmp_path))
  if int(transformers.__version__.split(".")[0]) >= 5:
    rope = dict(read.rope_parameters)
  else:
    rope = {**(read.rope_scaling or {"rope_type": "default"}), "rope_theta": read.rope_theta}
  assert rope == {"rope_type": "default", **dict(scaling), "rope_theta": 5e5}


def test_training_a_named_size_from_a_scaled_checkpoint_is_refused(tmp_path):
  """LLaMA-2 long-context fine-tunes use linear scaling; the named size `tiny` has none."""
  from lwm import model_dir, stage_schema
  path = rewrite_config(os.path.join(FIXTURES, "llama-rope-parameters"), tmp_path / "linear",
                        lambda c: c["rope_parameters"].update(rope_type="linear", factor=4.0))
  config = stage_schema.base_config()
  config.model, config.init_from = "tiny", path
  with pytest.raises(ValueError, match="rope_scaling"):
    model_dir.model_config(config, {"text_vocab_size": 256})
  config.model = "hf"
  scaling = model_dir.model_config(config, {"text_vocab_size": 256}).rope_scaling
  assert dict(scaling)["factor"] == 4.0


def test_a_named_size_with_another_rms_norm_eps_than_the_checkpoint_is_refused(tmp_path):
  """LLaMA-1 checkpoints use rms_norm_eps 1e-6; a named size must not replace it silently."""
  from lwm import model_dir, stage_schema
  path = rewrite_config(os.path.join(FIXTURES, "llama-rope-parameters"), tmp_path / "eps",
                        lambda c: c.update(rms_norm_eps=1e-6))
  config = stage_schema.base_config()
  config.model, config.init_from = "tiny", path
  with pytest.raises(ValueError, match="rms_norm_eps=1e-05 but the model in init_from"):
    model_dir.model_config(config, {"text_vocab_size": 256})
  config.model = "hf"
  assert model_dir.model_config(config, {"text_vocab_size": 256}).rms_norm_eps == 1e-6


def test_the_checkpoints_theta_is_kept_unless_the_stage_sets_one(tmp_path):
  """config.rope_theta 0 (the default) keeps config.json's θ, with `hf` and with a named size; a
  stage's θ replaces it."""
  from lwm import model_dir, stage_schema
  path = rewrite_config(os.path.join(FIXTURES, "llama-rope-parameters"), tmp_path / "theta",
                        lambda c: c["rope_parameters"].update(rope_theta=123456.0))
  config = stage_schema.base_config()
  for model in ("hf", "tiny"):
    config.model, config.init_from = model, path
    assert model_dir.model_config(config, {"text_vocab_size": 256}).rope_theta == 123456.0, model
  config.rope_theta = 1e6
  assert model_dir.model_config(config, {"text_vocab_size": 256}).rope_theta == 1e6
