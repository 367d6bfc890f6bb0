"""The LLaMA family as users bring it: Qwen2 and biased LLaMA checkpoints written by transformers
5.25 reproduce its logits; export writes what transformers reads back; Mistral's sliding window and
the fields lwm does not implement are refused by name.

tests/fixtures/hf-tokenizers/ (see its README): bytelevel-chatml is a Qwen2ForCausalLM (q/k/v
biases, tied head), bytelevel-llama3 a LlamaForCausalLM with attention_bias, mlp_bias and llama3
RoPE; `io.npz` holds tokens and the float32 logits transformers computed.
"""
import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lwm import sharding as shd
from lwm.model import Transformer, from_hf_llama, get_config, hf, to_hf_llama

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hf-tokenizers")
MODELS = ("bytelevel-chatml", "bytelevel-llama3")
LLAMA_FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "hf", "llama-rope-parameters")


def fixture(name):
  path = os.path.join(FIXTURES, name)
  io = np.load(os.path.join(path, "io.npz"))
  return path, io["tokens"], io["logits"]


def read_json(*parts):
  with open(os.path.join(*parts)) as f:
    return json.load(f)


def logits_of(path, tokens, **kwargs):
  model = from_hf_llama(path, vision_vocab_size=0, **kwargs)
  return np.asarray(jax.jit(lambda m, t: m(t))(model, jnp.asarray(tokens)))


# ------------------------------------------------------------------------------------ reading

@pytest.mark.parametrize("name", MODELS)
def test_reproduces_transformers_logits(name):
  path, tokens, expected = fixture(name)
  np.testing.assert_allclose(logits_of(path, tokens), expected, atol=2e-4, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_reproduces_transformers_logits_sharded(name, monkeypatch):
  """Biases streamed layer by layer into sharded buffers (the 7B path), tp, fsdp and sp all 2."""
  monkeypatch.setattr(hf, "STACK_ON_HOST_BYTES", 0)
  path, tokens, expected = fixture(name)
  model = from_hf_llama(path, vision_vocab_size=0, mesh=shd.make_mesh(1, 2, 2, 2))
  assert model.layers.bq[...].sharding.spec[1] == "tp"  # heads, like wq's output
  logits = jax.jit(lambda m, t: m(t))(model, jnp.asarray(tokens))
  np.testing.assert_allclose(np.asarray(logits), expected, atol=2e-4, rtol=0)


def test_fixture_families_are_read_not_defaulted():
  qwen2 = hf.config_from_hf(read_json(FIXTURES, "bytelevel-chatml", "config.json"))
  assert (qwen2.qkv_bias, qwen2.out_bias, qwen2.mlp_bias) == (True, False, False)
  assert qwen2.sliding_window == 0  # use_sliding_window false
  llama = hf.config_from_hf(read_json(FIXTURES, "bytelevel-llama3", "config.json"))
  assert (llama.qkv_bias, llama.out_bias, llama.mlp_bias) == (True, True, True)
  assert dict(llama.rope_scaling)["rope_type"] == "llama3" and llama.rope_theta == 500000.0


def test_prefill_and_cached_decode_apply_the_biases():
  """Prefill of 21 tokens, then 3 decode steps, give transformers' logits at every position."""
  from lwm.eval import inference
  path, tokens, expected = fixture("bytelevel-llama3")
  mesh = shd.make_mesh(1, 1, 2, 2)
  gen = inference.Generator(from_hf_llama(path, vision_vocab_size=0, mesh=mesh))
  row, prompt = tokens[:1], 21
  padded = np.zeros((1, inference.padded_length(prompt, 2)), np.int32)
  padded[0, :prompt] = row[0, :prompt]
  logits, cache = gen.prefill(padded, np.zeros_like(padded, bool), [prompt], 3)
  np.testing.assert_allclose(np.asarray(logits)[0], expected[0, prompt - 1], atol=2e-4, rtol=0)
  for step, position in enumerate(range(prompt, tokens.shape[1])):
    logits, cache = gen.decode(cache, row[:, position], step)
    np.testing.assert_allclose(np.asarray(logits)[0], expected[0, position], atol=2e-4, rtol=0)


# config.json as Llama 3.1 8B and Qwen2.5 7B ship it (the fields that shape the model).
LLAMA31_8B = {
    "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]}
QWEN25_7B = {
    "model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "sliding_window": 131072, "use_sliding_window": False, "max_window_layers": 28,
    "tie_word_embeddings": False, "bos_token_id": 151643, "eos_token_id": 151643}


@pytest.mark.parametrize("hf_config,params", [(LLAMA31_8B, 8_030_261_248),
                                              (QWEN25_7B, 7_615_616_512)])
def test_published_configs_give_the_published_parameter_counts(hf_config, params):
  """Meta's and Qwen's model cards count 8,030,261,248 and 7,615,616,512 parameters (Qwen2.5's
  with its q/k/v biases); eval_shape, nothing allocated."""
  from lwm.model import count_params
  config = hf.config_from_hf(hf_config, vision_vocab_size=0)
  abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
  assert count_params(nnx.state(abstract, nnx.Param)) == params
  assert config.sliding_window == 0 and config.max_sequence_length == 131072


# ------------------------------------------------------------------------------------ export

@pytest.mark.parametrize("name", MODELS)
def test_export_then_import_gives_the_same_logits(name, tmp_path):
  path, tokens, expected = fixture(name)
  to_hf_llama(from_hf_llama(path, vision_vocab_size=0), str(tmp_path), tokenizer_from=path)
  np.testing.assert_allclose(logits_of(str(tmp_path), tokens), expected, atol=2e-4, rtol=0)


def test_export_writes_the_family_and_its_fields(tmp_path):
  chatml, llama3 = (os.path.join(FIXTURES, n) for n in MODELS)
  to_hf_llama(from_hf_llama(chatml, vision_vocab_size=0), str(tmp_path / "qwen2"))
  written = read_json(tmp_path / "qwen2" / "config.json")
  assert written["model_type"] == "qwen2" and written["architectures"] == ["Qwen2ForCausalLM"]
  assert written["tie_word_embeddings"] is True and written["use_sliding_window"] is False
  tensors = hf.read_checkpoint(str(tmp_path / "qwen2"))
  assert "lm_head.weight" not in tensors and "model.layers.0.self_attn.q_proj.bias" in tensors
  assert "model.layers.0.self_attn.o_proj.bias" not in tensors

  to_hf_llama(from_hf_llama(llama3, vision_vocab_size=0), str(tmp_path / "llama"))
  written, source = read_json(tmp_path / "llama" / "config.json"), read_json(llama3, "config.json")
  assert written["model_type"] == "llama" and written["tie_word_embeddings"] is False
  for key in ("attention_bias", "mlp_bias", "head_dim", "rope_parameters"):
    assert written[key] == source[key], key


def test_export_with_the_tokenizer_directory_copies_its_files_and_every_eos(tmp_path):
  path = os.path.join(FIXTURES, "bytelevel-llama3")
  to_hf_llama(from_hf_llama(path, vision_vocab_size=0), str(tmp_path), tokenizer_from=path)
  for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
    with open(os.path.join(path, name), "rb") as a, open(tmp_path / name, "rb") as b:
      assert a.read() == b.read(), name
  config, generation = read_json(tmp_path, "config.json"), read_json(tmp_path,
                                                                      "generation_config.json")
  assert config["bos_token_id"] == generation["bos_token_id"] == 0
  assert config["eos_token_id"] == generation["eos_token_id"] == [1, 4]


def test_eos_ids_are_the_union_of_config_and_generation_config(tmp_path):
  with open(tmp_path / "config.json", "w") as f:
    json.dump({"bos_token_id": 1, "eos_token_id": 2}, f)
  with open(tmp_path / "generation_config.json", "w") as f:
    json.dump({"eos_token_id": [7, 2], "temperature": 0.6}, f)
  assert hf.read_token_ids(str(tmp_path)) == {"bos_token_id": 1, "eos_token_id": [7, 2]}
  hf.write_generation_config(str(tmp_path), {"eos_token_id": [7, 2, 9]}, str(tmp_path))
  assert read_json(tmp_path, "generation_config.json") == {"eos_token_id": [7, 2, 9],
                                                           "temperature": 0.6}


@pytest.mark.parametrize("biases,family,zeros", [
    (dict(qkv_bias=True, mlp_bias=True), "llama", "self_attn.o_proj.bias"),
    (dict(out_bias=True), "llama", "self_attn.q_proj.bias"),
])
def test_biases_no_family_has_alone_are_written_with_zero_partners(biases, family, zeros,
                                                                   tmp_path):
  """LLaMA's attention_bias puts biases on q, k, v and o together: the missing ones are zeros."""
  config = get_config("tiny", vision_vocab_size=0, **biases)
  model = Transformer(config, rngs=nnx.Rngs(0))
  for name in ("bq", "bk", "bv", "bo", "b_gate", "b_up", "b_down"):
    if hasattr(model.layers, name):  # non-zero, so that a dropped bias shows in the logits
      value = getattr(model.layers, name)
      value[...] = value[...] + 0.5
  to_hf_llama(model, str(tmp_path))
  assert read_json(tmp_path, "config.json")["model_type"] == family
  tensors = hf.read_checkpoint(str(tmp_path))
  assert not tensors[f"model.layers.0.{zeros}"].read().any()
  tokens = np.arange(32, dtype=np.int32)[None] % config.vocab_size
  expected = np.asarray(jax.jit(lambda m, t: m(t))(model, jnp.asarray(tokens)))
  np.testing.assert_allclose(logits_of(str(tmp_path), tokens), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_transformers_reads_the_exported_config_and_tokenizer(name, tmp_path):
  """Where transformers is installed (never a test dependency): its AutoConfig reads the family,
  biases and RoPE we wrote, and its AutoTokenizer the copied files, giving the fixture's ids."""
  transformers = pytest.importorskip("transformers")
  path, _, _ = fixture(name)
  to_hf_llama(from_hf_llama(path, vision_vocab_size=0), str(tmp_path), tokenizer_from=path)
  ours, source = (transformers.AutoConfig.from_pretrained(p) for p in (str(tmp_path), path))
  for key in ("model_type", "head_dim", "attention_bias", "mlp_bias", "tie_word_embeddings",
              "rope_parameters", "sliding_window", "layer_types", "eos_token_id"):
    assert getattr(ours, key, None) == getattr(source, key, None), key
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  expected = read_json(path, "expected.json")
  assert len(tokenizer) == expected["len_tokenizer"]
  for case in expected["texts"]:
    assert tokenizer.encode(case["text"]) == case["ids"], case["text"]


@pytest.mark.parametrize("name", MODELS)
def test_transformers_model_loads_the_export(name, tmp_path):
  """Where transformers and torch are installed: AutoModelForCausalLM reads the export and
  computes the fixture's logits."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  path, tokens, expected = fixture(name)
  to_hf_llama(from_hf_llama(path, vision_vocab_size=0), str(tmp_path), tokenizer_from=path)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path), dtype=torch.float32, attn_implementation="eager")
  with torch.no_grad():
    logits = model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(logits, expected, atol=2e-4, rtol=0)


# ------------------------------------------------------------------------------------ refusals

def llama_config(**changes):
  return {**read_json(LLAMA_FIXTURE, "config.json"), **changes}


def test_an_unknown_model_type_is_refused_naming_it_and_the_accepted_ones():
  with pytest.raises(ValueError, match=r"model_type='phi3'.*'llama', 'qwen2', 'mistral'"):
    hf.config_from_hf(llama_config(model_type="phi3"))


def test_mistral_window_at_least_the_sequence_is_full_attention():
  config = hf.config_from_hf(llama_config(model_type="mistral", sliding_window=4096,
                                          max_position_embeddings=4096))
  assert config.sliding_window == 4096 and config.max_sequence_length == 4096
  unlimited = hf.config_from_hf(llama_config(model_type="mistral", sliding_window=None))
  assert unlimited.sliding_window == 0


def test_mistral_window_below_the_asked_length_is_refused_at_load():
  mistral = llama_config(model_type="mistral", sliding_window=4096,
                         max_position_embeddings=32768)
  with pytest.raises(ValueError, match="sliding_window=4096.*max_sequence_length=8192"):
    hf.config_from_hf(mistral, max_sequence_length=8192)
  # Without a length asked for, it is held to the window (and refused beyond it when used).
  assert hf.config_from_hf(mistral).max_sequence_length == 4096


def test_mistral_window_below_the_stages_seq_len_is_refused(tmp_path):
  from lwm import model_dir, stage_schema
  path = tmp_path / "mistral"
  shutil.copytree(LLAMA_FIXTURE, path)
  with open(path / "config.json", "w") as f:
    json.dump(llama_config(model_type="mistral", sliding_window=512), f)
  config = stage_schema.base_config()
  config.model, config.init_from = "hf", str(path)
  config.seq_len = 1024
  with pytest.raises(ValueError, match="sliding_window=512"):
    model_dir.model_config(config, {"text_vocab_size": 256})
  config.seq_len = 512
  assert model_dir.model_config(config, {"text_vocab_size": 256}).sliding_window == 512
  config.model = "tiny"  # a named size has no window: it must not start from this one
  with pytest.raises(ValueError, match="sliding_window"):
    model_dir.model_config(config, {"text_vocab_size": 256})


def test_a_sequence_longer_than_the_window_is_refused_when_used():
  from lwm.model import decode
  config = get_config("tiny", vision_vocab_size=0, sliding_window=16, max_sequence_length=16)
  model = Transformer(config, rngs=nnx.Rngs(0))
  shapes = lambda fn, *args: jax.eval_shape(fn, *args)  # the check runs when the shape is known
  shapes(model, jnp.zeros((1, 16), jnp.int32))
  with pytest.raises(ValueError, match="sequence length=17 but the model has sliding_window=16"):
    shapes(model, jnp.zeros((1, 17), jnp.int32))
  with pytest.raises(ValueError, match="max_new_tokens=20 but the model has sliding_window=16"):
    shapes(lambda t: decode.prefill(model, t, None, jnp.array([3]), max_new_tokens=4),
           jnp.zeros((1, 16), jnp.int32))
  with pytest.raises(ValueError, match="max_sequence_length=32"):
    get_config("tiny", sliding_window=16, max_sequence_length=32)


@pytest.mark.parametrize("fields,window", [
    ({"use_sliding_window": False, "sliding_window": 64}, 0),
    ({"use_sliding_window": True, "sliding_window": 64, "max_window_layers": 28}, 0),
    ({"use_sliding_window": True, "sliding_window": 64, "max_window_layers": 1}, 64),
    ({"use_sliding_window": True, "sliding_window": 64,
      "layer_types": ["sliding_attention", "full_attention"]}, 64),
])
def test_qwen2_window_applies_only_where_transformers_applies_it(fields, window):
  config = hf.config_from_hf(llama_config(model_type="qwen2", max_position_embeddings=64,
                                          **fields))
  assert config.sliding_window == window


def test_qwen2_unknown_layer_type_is_refused():
  with pytest.raises(ValueError, match="chunked_attention"):
    hf.config_from_hf(llama_config(model_type="qwen2", use_sliding_window=True,
                                   layer_types=["chunked_attention", "full_attention"]))


def test_fields_a_family_does_not_read_are_ignored_as_transformers_ignores_them(caplog):
  with caplog.at_level(logging.WARNING):
    mistral = hf.config_from_hf(llama_config(model_type="mistral", attention_bias=True,
                                             sliding_window=None))
  assert not (mistral.qkv_bias or mistral.out_bias) and "attention_bias" in caplog.text


def test_attention_dropout_is_read_and_said_to_be_training_only(caplog):
  with caplog.at_level(logging.WARNING):
    hf.config_from_hf(llama_config(attention_dropout=0.1))
  assert "attention_dropout=0.1" in caplog.text


def test_a_named_size_does_not_start_from_a_biased_checkpoint():
  from lwm import model_dir, stage_schema
  config = stage_schema.base_config()
  config.model, config.init_from = "tiny", os.path.join(FIXTURES, "bytelevel-chatml")
  config.model_overrides = {"num_heads": 4, "num_kv_heads": 2, "rms_norm_eps": 1e-6}
  with pytest.raises(ValueError, match="qkv_bias"):
    model_dir.model_config(config, {"text_vocab_size": 256})


def test_a_window_with_llama_biases_cannot_be_exported(tmp_path):
  config = get_config("tiny", sliding_window=64, max_sequence_length=64, mlp_bias=True)
  with pytest.raises(ValueError, match="sliding_window=64"):
    to_hf_llama(Transformer(config, rngs=nnx.Rngs(0)), str(tmp_path))


def load_script(name):
  import importlib.util
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts", name)
  spec = importlib.util.spec_from_file_location(name[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_export_script_on_a_hf_directory_takes_its_tokenizer(tmp_path):
  path, tokens, expected = fixture("bytelevel-llama3")
  load_script("export_hf.py").main(["--checkpoint", path, "--output", str(tmp_path)])
  np.testing.assert_allclose(logits_of(str(tmp_path), tokens), expected, atol=2e-4, rtol=0)
  assert read_json(tmp_path, "generation_config.json")["eos_token_id"] == [1, 4]
  assert os.path.isfile(tmp_path / "tokenizer.json")


def test_export_script_reads_a_model_directorys_ids():
  ids = load_script("export_hf.py").token_ids({"bos": -1, "eos": 7, "tokenizer": "t.model"})
  assert ids == {"eos_token_id": 7}  # -1: the tokenizer has no bos


@pytest.mark.slow
def test_export_script_writes_a_workdirs_text_model_with_its_tokenizer(tmp_path):
  """scripts/export_hf.py on a training workdir (sentencepiece tokenizer, vision vocabulary): the
  export holds the text model, tokenizer.model and the dataset's bos/eos ids."""
  import eval_testing
  from lwm import model_dir
  workdir = eval_testing.make_workdir(str(tmp_path / "run"))
  out = str(tmp_path / "hf")
  eval_testing.run_script("export_hf.py", "--checkpoint", workdir, "--output", out)
  loaded = model_dir.load_model(workdir)
  tokens = np.arange(1, 33, dtype=np.int32)[None]
  expected = np.asarray(jax.jit(lambda m, t: m(t))(loaded.model, jnp.asarray(tokens)))
  np.testing.assert_allclose(logits_of(out, tokens), expected, atol=1e-5, rtol=0)
  with open(loaded.vocab["tokenizer"], "rb") as a, open(os.path.join(out, "tokenizer.model"),
                                                         "rb") as b:
    assert a.read() == b.read()
  config = read_json(out, "config.json")
  assert (config["bos_token_id"], config["eos_token_id"]) == (loaded.vocab["bos"],
                                                              loaded.vocab["eos"])
