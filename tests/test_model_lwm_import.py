"""LWM's `params` files read by `lwm.model.from_lwm` give the logits LWM's own code computed
(tests/fixtures/lwm*: written and run by LWM at commit f45d2b7 with JAX 0.4.29; their README.md
states every convention and the tolerances used here)."""
import json
import os

import jax.numpy as jnp
import msgpack
import numpy as np
import pytest

import eval_testing
from lwm import ops
from lwm import sharding as shd
from lwm.model import from_lwm, lwm_format

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
SETS = ["lwm", "lwm-b"]  # stacked scan_decoder layers / per-layer h/<i>


def path(name, file):
  return os.path.join(FIXTURES, name, file)


def logits_on_valid_positions(model, io, sp=1):
  """(vision, text) logits `[valid, vocab]` of the fixture's inputs; LWM's left padding is our
  segment id 0 (LWM's outputs at padded queries are an artefact; the README says compare only
  where attention_mask == 1)."""
  zig = lambda a: ops.to_zigzag(jnp.asarray(a), sp)
  hidden = model.hidden_states(zig(io["input_ids"]), zig(io["vision_masks"]),
                               zig(io["position_ids"]), zig(io["attention_mask"].astype(np.int32)))
  valid = io["attention_mask"].astype(bool)
  out = [np.asarray(ops.from_zigzag(model.logits(hidden, head), sp))[valid]
         for head in ("vision", "text")]
  return out, valid


@pytest.mark.parametrize("name", SETS)
def test_logits_match_lwm(name):
  io = np.load(path(name, "llama_io.npz"))
  model = from_lwm(path(name, "params"), path(name, "config.json"))
  (vision, text), valid = logits_on_valid_positions(model, io)
  assert valid.sum() < valid.size  # the fixture's left padding is exercised
  np.testing.assert_allclose(vision, io["vision_logits"][valid], atol=1e-4, rtol=0)
  np.testing.assert_allclose(text, io["text_logits"][valid], atol=1e-4, rtol=0)


def test_logits_match_lwm_on_a_sharded_mesh():
  io = np.load(path("lwm", "llama_io.npz"))
  mesh = shd.make_mesh(1, 2, 2, 2)
  model = from_lwm(path("lwm", "params"), path("lwm", "config.json"), mesh=mesh)
  assert model.layers.wq[...].sharding.mesh.shape["tp"] == 2
  (vision, text), valid = logits_on_valid_positions(model, io, sp=2)
  np.testing.assert_allclose(vision, io["vision_logits"][valid], atol=1e-4, rtol=0)
  np.testing.assert_allclose(text, io["text_logits"][valid], atol=1e-4, rtol=0)


def records(file):
  """[(key list, value bytes)] of an LWM params file, as stored."""
  with open(file, "rb") as f:
    return [tuple(r) for r in msgpack.Unpacker(f, raw=False, max_buffer_size=2**30)]


@pytest.mark.parametrize("name", SETS)
def test_chunked_records_read_as_the_plain_ones(name, tmp_path):
  chunked = records(path(name, "params_chunked_layers"))
  plain = dict(lwm_format.read_records(path(name, "params")))
  assert any(b"__msgpack_chunked_array__" in value for _, value in chunked)
  for key, array in lwm_format.read_records(path(name, "params_chunked_layers")):
    np.testing.assert_array_equal(np.asarray(array, np.float32), np.asarray(plain[key], np.float32))
  # The whole model with those records chunked (msgpack streams concatenate) gives LWM's logits.
  replaced = {"/".join(key) for key, _ in chunked}
  mixed = tmp_path / "params"
  with open(mixed, "wb") as f:
    for key, value in records(path(name, "params")):
      if "/".join(key) not in replaced:
        f.write(msgpack.packb([key, value], use_bin_type=True))
    f.write(open(path(name, "params_chunked_layers"), "rb").read())
  io = np.load(path(name, "llama_io.npz"))
  (vision, text), valid = logits_on_valid_positions(
      from_lwm(str(mixed), path(name, "config.json")), io)
  np.testing.assert_allclose(vision, io["vision_logits"][valid], atol=1e-4, rtol=0)
  np.testing.assert_allclose(text, io["text_logits"][valid], atol=1e-4, rtol=0)


def test_layers_stacked_on_axis_1_are_read(tmp_path):
  """LWM's param_scan_axis=1 writes stacked layers as [in, L, out] (fixture README's table)."""
  moved = tmp_path / "params"
  lwm_format.write_records(str(moved), (
      (key, np.moveaxis(array, 0, 1) if "scan_decoder" in key else array)
      for key, array in lwm_format.read_records(path("lwm", "params"))))
  fields = lwm_format.lwm_fields(path("lwm", "config.json"))
  io = np.load(path("lwm", "llama_io.npz"))
  model = from_lwm(str(moved), dict(fields, param_scan_axis=1))
  (vision, _), valid = logits_on_valid_positions(model, io)
  np.testing.assert_allclose(vision, io["vision_logits"][valid], atol=1e-4, rtol=0)


def test_written_records_read_back_chunked_or_not(tmp_path):
  """Our writer (used by the benchmark) against the fixture file LWM wrote: same records back."""
  original = dict(lwm_format.read_records(path("lwm", "params")))
  lwm_format.write_records(str(tmp_path / "params"), original.items(), chunk_bytes=16384)
  again = dict(lwm_format.read_records(str(tmp_path / "params")))
  assert list(again) == list(original)
  for key, array in original.items():
    assert again[key].dtype == array.dtype
    np.testing.assert_array_equal(np.asarray(again[key], np.float32), np.asarray(array, np.float32))


def test_released_names_give_lwm_7b_shapes_and_theta():
  chat = lwm_format.config_from_lwm("lwm-chat-1m")
  shape = (chat.vocab_size, chat.vision_vocab_size, chat.hidden_size, chat.num_layers,
           chat.num_heads, chat.num_kv_heads, chat.rms_norm_eps, chat.rope_theta)
  assert shape == (32000, 8448, 4096, 32, 32, 32, 1e-6, 5e7)
  text = lwm_format.config_from_lwm("LWM-Text-Chat-512K")
  assert (text.vision_vocab_size, text.rope_theta, text.max_sequence_length) == (0, 2.5e7, 524288)
  with pytest.raises(ValueError, match="released model name"):
    lwm_format.config_from_lwm("lwm-chat-2m")


@pytest.mark.parametrize("field,value", [("tie_word_embeddings", True),
                                         ("tie_vision_embeddings", True), ("resid_pdrop", 0.1),
                                         ("num_key_value_heads", 2)])
def test_fields_that_change_the_math_are_refused_by_name(field, value):
  fields = dict(lwm_format.lwm_fields(path("lwm", "config.json")), **{field: value})
  with pytest.raises(ValueError, match=field):
    lwm_format.config_from_lwm(fields)


def test_a_config_that_does_not_fit_the_file_is_refused():
  fields = dict(lwm_format.lwm_fields(path("lwm", "config.json")), hidden_size=32)
  with pytest.raises(ValueError, match="shape"):
    from_lwm(path("lwm", "params"), fields)


# ---------------------------------------------------------------------------- The whole chain

@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """scripts/import_lwm.py on the `lwm-b` fixture (per-layer records, 320 text ids, 8200 vision
  ids) with a sentencepiece tokenizer trained here for its 320 text ids."""
  from lwm.data import text_tokenizer
  from lwm.eval import needle, video_needle
  root = tmp_path_factory.mktemp("imported")
  texts = [needle.synthetic_haystack(300, seed=1), video_needle.video_example_text("123")]
  tokenizer = text_tokenizer.train_tokenizer(texts, str(root / "tokenizer.model"), vocab_size=320)
  assert len(text_tokenizer.load_tokenizer(tokenizer)) <= 320
  out = str(root / "model")
  eval_testing.run_script("import_lwm.py", "--params", path("lwm-b", "params"), "--config",
             path("lwm-b", "config.json"), "--vqgan", path("lwm-b", "vqgan"), "--vqgan-config",
             path("lwm-b", "vqgan_config.json"), "--tokenizer", tokenizer, "--output", out)
  return out, root


def test_the_imported_directory_gives_lwm_logits_and_lwm_vision_ids(imported):
  from lwm import model_dir, vqgan
  out, _ = imported
  loaded = model_dir.load_model(out, shd.make_mesh())
  io = np.load(path("lwm-b", "llama_io.npz"))
  (vision, text), valid = logits_on_valid_positions(loaded.model, io)
  np.testing.assert_allclose(vision, io["vision_logits"][valid], atol=1e-4, rtol=0)
  np.testing.assert_allclose(text, io["text_logits"][valid], atol=1e-4, rtol=0)
  assert (loaded.vocab["eof"], loaded.vocab["eov"], loaded.vocab["vision_vocab_size"]) == (
      8192, 8193, 8200)
  frames = np.load(path("lwm-b", "vqgan_io.npz"))
  codes = vqgan.FrameEncoder(vqgan.load(loaded.vqgan_dir))(frames["frames"])
  np.testing.assert_array_equal(codes, frames["codes"].reshape(len(codes), -1))


@pytest.mark.slow
def test_evaluation_ask_preprocessing_and_training_accept_the_imported_directory(imported):
  import jax
  from flax import nnx
  from lwm import checkpoint, model_dir, stage_schema, train
  from lwm.data import preprocess, synthetic
  from lwm.data.dataset import read_vocab
  from lwm.data.video import FrameSampling
  out, root = imported
  stdout = eval_testing.run_script("eval_needle.py", "--checkpoint", out, "--mode", "video",
                                   "--context-lengths", "200", "--depth-intervals", "2",
                                   "--output", str(root / "needle"), "--mesh", "1,1,1,8")
  assert "overall accuracy" in stdout
  clip = synthetic.write_video(str(root / "clip.mp4"), synthetic.moving_frames(6, 32, 32))
  assert eval_testing.run_script("ask.py", "--checkpoint", out, "--video", clip, "--question",
                    "What number is shown in the video?", "--max-new-tokens", "3").endswith("\n")

  # A corpus tokenized with the imported VQGAN (preprocess --vqgan DIR) keeps LWM's vision ids.
  manifest = root / "manifest.jsonl"
  lines = [{"video": "clip.mp4", "text": "a moving square"}] * 4
  lines += [{"text": synthetic.random_text(np.random.default_rng(i), 60)} for i in range(12)]
  manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
  data = str(root / "data")
  preprocess.preprocess(preprocess.PreprocessOptions(
      str(manifest), data, str(root / "tokenizer.model"), out,
      sampling=FrameSampling(max_frames=2)), progress=False)
  recorded = read_vocab(data)
  assert (recorded["eof"], recorded["eov"], recorded["codebook_size"]) == (8192, 8193, 128)

  # Training starts from the directory: with lr 0 the first step leaves its parameters as they were.
  c = stage_schema.base_config()
  c.model, c.init_from, c.seq_len, c.mesh, c.data.path = "init_from", out, 256, "1,8,1,1", data
  c.train.steps, c.train.batch_size, c.train.lr, c.train.weight_decay = 1, 8, 0.0, 0.0
  c.train.dtype, c.rope_theta, c.checkpoint.async_save = "float32", 1e7, False
  train.train(c, str(root / "run"))
  model = model_dir.load_model(out).model
  _, abstract = nnx.split(model, nnx.Param)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract)
  trained, step = checkpoint.restore_params(str(root / "run"), abstract)
  assert step == 1
  np.testing.assert_array_equal(np.asarray(trained["layers"]["wq"][...]),
                                np.asarray(model.layers.wq[...]))
