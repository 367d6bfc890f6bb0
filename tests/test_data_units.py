"""Units of the data stage: frame sampling, resizing, decoding each codec, the VQGAN's shapes and
training, the text tokenizer's markers, and the interleaved layout."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwm import vqgan
from lwm.data import interleave, synthetic, text_tokenizer, video
from lwm.vqgan import train as vqgan_train


def test_uniform_sampling_spans_the_video():
  idx = video.sample_indices(100, 30.0, video.FrameSampling(max_frames=5))
  np.testing.assert_array_equal(idx, [0, 25, 50, 74, 99])


def test_fps_sampling_takes_a_stride_and_caps_the_count():
  np.testing.assert_array_equal(video.sample_indices(30, 25.0, video.FrameSampling(fps=5)),
                                np.arange(0, 30, 5))
  capped = video.sample_indices(300, 30.0, video.FrameSampling(fps=10, max_frames=4))
  assert len(capped) == 4 and capped[0] == 0 and capped[-1] >= 290
  # asking for more fps than the video has never repeats frames
  np.testing.assert_array_equal(video.sample_indices(4, 10.0, video.FrameSampling(fps=50)),
                                np.arange(4))


def test_resize_matches_jax_antialiased_linear():
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (2, 60, 90, 3), dtype=np.uint8)
  ours = video.resize_and_crop(frames, 32)                    # 60x90 -> 32x48 -> crop 32x32
  full = jax.image.resize(jnp.asarray(frames, jnp.float32), (2, 32, 48, 3), "linear",
                          antialias=True)
  reference = np.clip(np.round(np.asarray(full)[:, :, 8:40]), 0, 255)
  assert np.abs(ours.astype(int) - reference).max() <= 1


@pytest.mark.parametrize("kind,height,width", [("mp4", 48, 64), ("webm", 64, 40), ("avi", 36, 36)])
def test_decode_each_codec_gives_the_written_frames(tmp_path, kind, height, width):
  source = synthetic.moving_frames(12, height, width)
  path = synthetic.write_video(str(tmp_path / f"v.{kind}"), source, kind, fps=12)
  frames = video.decode_video(path, 32, video.FrameSampling(max_frames=4))
  assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
  expected = video.resize_and_crop(source[[0, 4, 7, 11]], 32)
  assert np.abs(frames.astype(float) - expected).mean() < 12, "decoded frames differ from source"


def test_broken_files_raise_video_error_with_the_reason(tmp_path):
  (tmp_path / "empty.mp4").write_bytes(b"")
  (tmp_path / "text.mp4").write_text("not a video")
  sampling = video.FrameSampling(max_frames=2)
  cases = [("empty.mp4", "empty", "video"), ("text.mp4", "cannot decode", "video"),
           ("none.mp4", "missing", "missing")]
  for name, words, kind in cases:
    with pytest.raises(video.VideoError, match=words) as raised:
      video.decode_video(str(tmp_path / name), 16, sampling)
    assert raised.value.kind == kind  # the failure kind comes from the exception's class


def test_lwm_vqgan_config_shapes_without_allocating():
  config = vqgan.get_config("lwm")
  assert (config.resolution, config.grid, config.codes_per_frame, config.codebook_size) == (
      256, 16, 256, 8192)
  model = nnx.eval_shape(lambda: vqgan.VQGAN(config, rngs=nnx.Rngs(0)))
  assert model.codebook.shape == (8192, 64)
  graphdef, state = nnx.split(model)
  codes = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).encode(x), state,
                         jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32))
  assert codes.shape == (2, 16, 16) and codes.dtype == jnp.int32
  pixels = jax.eval_shape(lambda s, c: nnx.merge(graphdef, s).decode(c), state, codes)
  assert pixels.shape == (2, 256, 256, 3)


def test_vqgan_save_load_and_jitted_encoder_agree(tmp_path):
  model = vqgan.create(vqgan.get_config("tiny"), 3)
  vqgan.save(str(tmp_path / "vq"), model)
  loaded = vqgan.load(str(tmp_path / "vq"))
  frames = synthetic.moving_frames(5, 16, 16)
  codes = vqgan.FrameEncoder(loaded, batch_size=4)(frames)  # 5 frames: one full, one padded batch
  assert codes.shape == (5, 16)
  direct = nnx.jit(lambda m, x: m.encode(x))(model, vqgan.to_pixels(frames))
  np.testing.assert_array_equal(codes, np.asarray(direct).reshape(5, -1))


def test_vqgan_training_improves_reconstruction():
  frames = np.concatenate([synthetic.moving_frames(16, 16, 16, seed=s) for s in range(3)])
  model = vqgan.create(vqgan.get_config("tiny"), 0)
  before = vqgan_train.reconstruction_psnr(model, frames[-8:])
  model, history = vqgan_train.train(model, frames[:-8], steps=60, batch_size=8, learning_rate=3e-3)
  after = vqgan_train.reconstruction_psnr(model, frames[-8:])
  assert history[-1]["loss"] < history[0]["loss"] / 2
  assert after > before + 3, (before, after)


def test_tokenizer_reserves_markers_and_llama_style_models_spell_them(tmp_path):
  texts = ["the quick brown fox jumps over the lazy dog " * 5, "ünïcödé 中文", "code 4711 " * 50]
  ours = text_tokenizer.load_tokenizer(
      text_tokenizer.train_tokenizer(texts, str(tmp_path / "ours.model"), vocab_size=320))
  for marker in text_tokenizer.RESERVED:
    assert len(ours.marker(marker)) == 1
  assert ours.decode(ours.encode(texts[1], add_special_tokens=False)) == texts[1]
  # Digits stay single pieces even in a number the training text repeats.
  ids = ours.encode("code 4711", add_special_tokens=False)
  pieces = [ours.processor.id_to_piece(i) for i in ids]
  assert pieces[-4:] == ["4", "7", "1", "1"], pieces
  # A model without the reserved symbols (like LLaMA's) is used as it is: markers become pieces.
  import sentencepiece as spm
  spm.SentencePieceTrainer.train(sentence_iterator=iter(texts * 3),
                                 model_prefix=str(tmp_path / "plain"),
                                 vocab_size=300, byte_fallback=True, minloglevel=2,
                                 hard_vocab_limit=False)
  plain = text_tokenizer.load_tokenizer(str(tmp_path / "plain.model"))
  assert len(plain.vision_start) > 1 and plain.decode(plain.vision_start) == "<vision>"
  with pytest.raises(FileNotFoundError, match="does not exist"):
    text_tokenizer.load_tokenizer(str(tmp_path / "none.model"))


def test_interleave_layout_and_masks():
  vocab = interleave.Vocab(bos=1, eos=2, vision_start=(10,), vision_end=(11,), codebook_size=100)
  codes = np.array([[5, 6], [7, 8]])
  text = [20, 21, 22]
  vt = interleave.interleave(text, codes, "video_text", vocab)
  np.testing.assert_array_equal(vt["tokens"], [1, 10, 5, 6, 100, 7, 8, 101, 11, 20, 21, 22, 2])
  np.testing.assert_array_equal(vt["vision_mask"], [0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(vt["loss_mask"], [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
  tv = interleave.interleave(text, codes, "text_video", vocab)
  np.testing.assert_array_equal(tv["tokens"], [1, 20, 21, 22, 10, 5, 6, 100, 7, 8, 101, 11, 2])
  np.testing.assert_array_equal(tv["loss_mask"], [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
  both = interleave.interleave(text, codes, "both", vocab)
  assert both["loss_mask"][1:].all() and not both["loss_mask"][0]
  only_text = interleave.interleave(text, None, "video_text", vocab)
  np.testing.assert_array_equal(only_text["tokens"], [1, 20, 21, 22, 2])
  with pytest.raises(ValueError, match="order must be one of"):
    interleave.interleave(text, codes, "sideways", vocab)
  # A prompt sits right before the text and is never a target.
  asked = interleave.interleave([23], None, "video_text", vocab, prompt_ids=[30, 31])
  np.testing.assert_array_equal(asked["tokens"], [1, 30, 31, 23, 2])
  np.testing.assert_array_equal(asked["loss_mask"], [0, 0, 0, 1, 1])
  asked = interleave.interleave([23], codes, "video_text", vocab, prompt_ids=[30])
  np.testing.assert_array_equal(asked["tokens"], [1, 10, 5, 6, 100, 7, 8, 101, 11, 30, 23, 2])
  np.testing.assert_array_equal(asked["loss_mask"], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1])


def test_manifest_failure_kinds_are_exception_classes():
  from lwm.data import lines
  cases = [(b"\xff", lines.NotUtf8, "utf8"), (b"", lines.NotJson, "json"),
           (b"[1]", lines.BadFields, "fields"),
           (b'{"text": "a", "order": "x"}', lines.BadFields, "fields")]
  for raw, error, kind in cases:
    with pytest.raises(error) as raised:
      lines.parse_line(raw)
    assert raised.value.kind == kind and isinstance(raised.value, lines.LineError)


def test_manifest_prompt_field():
  from lwm.data.lines import LineError, parse_line
  line = parse_line(b'{"prompt": "Question: Why? Answer:", "text": " Because."}')
  assert line["prompt"] == "Question: Why? Answer:" and line["text"] == " Because."
  assert parse_line(b'{"text": "no prompt"}')["prompt"] == ""
  with pytest.raises(LineError, match="'prompt' must be a string"):
    parse_line(b'{"prompt": 3, "text": "x"}')
