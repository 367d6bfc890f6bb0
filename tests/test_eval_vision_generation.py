"""Text -> image/video generation (lwm.eval.vision_generation) on LWM's imported fixture model and
VQGAN (tests/fixtures/lwm-b: 8x8 = 64 codes a frame, 128 codes, 32x32 pixels)."""
import os

import av
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwm import vqgan as vqgan_lib
from lwm.eval import vision_generation as vg
from lwm.model import from_lwm
from lwm.vocab import Vocab

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "lwm-b")
K, CODES = 128, 64
VOCAB = Vocab(bos=1, eos=2, vision_start=(7,), vision_end=(8,), codebook_size=K)
COND = [[1, 20, 33, 41, 52, 7], [1, 90, 7]]   # prompts of different lengths
UNCOND = [[1, 7], [1, 7]]
VIDEO = [[1, 20, 34, 41, 52, 60, 7], [1, 91, 7]]   # the second pass's "Generate a video of" prompts
GREEDY = vg.Settings(cfg_scale_image=3.0, cfg_scale_video=1.5, top_k_image=1, top_k_video=1)


@pytest.fixture(scope="module")
def model():
  return from_lwm(os.path.join(FIXTURE, "params"), os.path.join(FIXTURE, "config.json"))


@pytest.fixture(scope="module")
def vqgan():
  return vqgan_lib.from_lwm(os.path.join(FIXTURE, "vqgan"),
                            os.path.join(FIXTURE, "vqgan_config.json"))


def test_guidance_matches_a_float64_reference():
  rng = np.random.default_rng(0)
  cond, uncond = rng.standard_normal((2, 3, 50)).astype(np.float32)
  for scale in (0.0, 1.0, 3.5):
    got = np.asarray(vg.guided_logits(jnp.asarray(cond), jnp.asarray(uncond), scale))
    want = uncond.astype(np.float64) + scale * (cond.astype(np.float64) - uncond)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_only_codes_are_sampled_and_top_k_keeps_the_k_best():
  logits = jnp.asarray(np.random.default_rng(1).standard_normal((4, 200)), jnp.float32)
  logits = logits.at[:, 150].set(100.0)  # a marker id far above any code
  masked = vg.code_logits(logits, K)
  assert np.all(np.asarray(vg.sample_codes(masked, jax.random.key(0), 1.0, 0)) < K)
  top3 = np.argsort(-np.asarray(logits)[:, :K], axis=1)[:, :3]
  for seed in range(20):
    drawn = np.asarray(vg.sample_codes(masked, jax.random.key(seed), 1.0, 3))
    assert all(d in row for d, row in zip(drawn, top3))


def full_recompute_codes(model, cond, uncond, scale, count, vision_tail=0):
  """The first `count` codes by greedy guided decoding with the model's full forward pass on the
  growing sequences (no cache), a causal model padded at the end to one length; the last
  `vision_tail` ids of each prompt are vision ids."""
  rows = [list(cond), list(uncond)]
  masks = [[False] * (len(r) - vision_tail) + [True] * vision_tail for r in rows]
  total = max(len(cond), len(uncond)) + count
  codes = []
  forward = jax.jit(lambda t, m: model(t, m, head="vision"))
  for _ in range(count):
    tokens = np.zeros((2, total), np.int32)
    mask = np.zeros((2, total), bool)
    for i in range(2):
      tokens[i, :len(rows[i])], mask[i, :len(rows[i])] = rows[i], masks[i]
    logits = np.asarray(forward(tokens, mask), np.float64)
    c = logits[0, len(rows[0]) - 1, :K]
    u = logits[1, len(rows[1]) - 1, :K]
    code = int(np.argmax(u + scale * (c - u)))
    codes.append(code)
    for i in range(2):
      rows[i].append(code)
      masks[i].append(True)
  return codes


def test_greedy_first_frame_equals_full_recomputation_without_a_cache(model):
  # 16 codes of the 64-code first frame: the no-cache reference runs a full forward per code.
  got = vg.generate_codes(model, COND, UNCOND, VOCAB, GREEDY, frames=1, codes_per_frame=CODES)
  assert got.shape == (2, 1, CODES)
  for row in range(2):
    want = full_recompute_codes(model, COND[row], UNCOND[row], GREEDY.cfg_scale_image, 16)
    assert got[row, 0, :16].tolist() == want


def test_greedy_video_is_deterministic_with_markers_by_rule(model):
  first = vg.generate_codes(model, COND, UNCOND, VOCAB, GREEDY, frames=3, codes_per_frame=CODES,
                            video_prompts=VIDEO, seed=0)
  again = vg.generate_codes(model, COND, UNCOND, VOCAB, GREEDY, frames=3, codes_per_frame=CODES,
                            video_prompts=VIDEO, seed=123)
  np.testing.assert_array_equal(first, again)
  assert first.min() >= 0 and first.max() < K  # no marker and no other vision id inside a frame
  seq = vg.vision_sequence(first[0], VOCAB)
  assert seq.shape == (3 * (CODES + 1),)
  assert seq[CODES] == seq[2 * CODES + 1] == VOCAB.eof and seq[-1] == VOCAB.eov
  assert np.isin(seq, [VOCAB.eof, VOCAB.eov]).sum() == 3


def test_second_frame_follows_lwms_video_pass_without_a_cache(model):
  # LWM's second pass: the video prompt (and <vision> alone) followed by frame 1's codes and <eof>.
  settings = vg.Settings(cfg_scale_image=3.0, cfg_scale_video=2.0, top_k_image=1, top_k_video=1)
  got = vg.generate_codes(model, COND, UNCOND, VOCAB, settings, frames=2, codes_per_frame=CODES,
                          video_prompts=VIDEO)
  for row in range(2):
    tail = got[row, 0].tolist() + [VOCAB.eof]
    want = full_recompute_codes(model, VIDEO[row] + tail, UNCOND[row] + tail, 2.0, 8,
                                vision_tail=len(tail))
    assert got[row, 1, :8].tolist() == want


def test_scale_one_is_plain_greedy_decoding_of_the_conditional_prompt(model):
  settings = vg.Settings(cfg_scale_image=1.0, top_k_image=1)
  # The unconditional rows differ; at scale 1 they must not matter.
  a = vg.generate_codes(model, COND[:1], UNCOND[:1], VOCAB, settings, codes_per_frame=CODES)
  b = vg.generate_codes(model, COND[:1], [[1, 33, 44, 7]], VOCAB, settings, codes_per_frame=CODES)
  np.testing.assert_array_equal(a, b)
  want = full_recompute_codes(model, COND[0], UNCOND[0], 1.0, 8)
  assert a[0, 0, :8].tolist() == want


def test_generation_writes_a_png_and_an_mp4_of_the_right_shape(model, vqgan, tmp_path):
  assert vqgan.config.codes_per_frame == CODES
  codes = vg.generate_codes(model, COND[:1], UNCOND[:1], VOCAB, vg.Settings(top_k_image=20,
                            top_k_video=20), frames=3, codes_per_frame=CODES,
                            video_prompts=VIDEO[:1], seed=4)
  frames = vg.decode_frames(vqgan, codes[0])
  assert frames.shape == (3, 32, 32, 3) and frames.dtype == np.uint8
  vg.write_png(str(tmp_path / "a.png"), frames[0])
  vg.write_mp4(str(tmp_path / "a.mp4"), frames)
  with av.open(str(tmp_path / "a.png")) as png:
    image = next(png.decode(video=0)).to_ndarray(format="rgb24")
  np.testing.assert_array_equal(image, frames[0])  # PNG is lossless
  with av.open(str(tmp_path / "a.mp4")) as mp4:
    read = [f.to_ndarray(format="rgb24") for f in mp4.decode(video=0)]
  assert len(read) == 3 and read[0].shape == (32, 32, 3)


def test_a_unconditional_prompt_of_one_token_is_refused(model):
  with pytest.raises(ValueError, match="BOS"):
    vg.generate_codes(model, COND[:1], [[7]], VOCAB, GREEDY, codes_per_frame=CODES)


@pytest.mark.slow  # two subprocesses, each loading JAX and compiling (~25 s)
def test_generate_script_on_a_model_trained_here(tmp_path):
  import eval_testing
  workdir = eval_testing.make_workdir(str(tmp_path))
  png, mp4 = str(tmp_path / "g.png"), str(tmp_path / "g.mp4")
  common = ("--checkpoint", workdir, "--prompt", "the number 7", "--top-k-image", "5",
            "--top-k-video", "5")
  eval_testing.run_script("generate.py", *common, "--output", png)
  eval_testing.run_script("generate.py", *common, "--output", mp4, "--frames", "2")
  with av.open(png) as f:
    assert next(f.decode(video=0)).to_ndarray(format="rgb24").shape == (16, 16, 3)
  with av.open(mp4) as f:
    read = [frame.to_ndarray(format="rgb24") for frame in f.decode(video=0)]
  assert len(read) == 2 and read[0].shape == (16, 16, 3)


def test_a_sharded_mesh_generates_the_same_greedy_codes(model):
  from lwm import sharding as shd
  sharded = from_lwm(os.path.join(FIXTURE, "params"), os.path.join(FIXTURE, "config.json"),
                     mesh=shd.make_mesh(1, 1, 2, 4))
  want = vg.generate_codes(model, COND, UNCOND, VOCAB, GREEDY, codes_per_frame=CODES)
  got = vg.generate_codes(sharded, COND, UNCOND, VOCAB, GREEDY, codes_per_frame=CODES)
  np.testing.assert_array_equal(got, want)


def test_generation_assets_name_the_flag_of_what_is_missing():
  from lwm.model_dir import LoadedModel
  bare = LoadedModel(model=None, tokenizer=None, vocab={}, vqgan_dir=None, sampling=None,
                     source="x")
  with pytest.raises(ValueError, match="pass --tokenizer PATH"):
    vg.generation_assets(bare)
  with pytest.raises(ValueError, match="pass --vqgan DIR"):
    vg.generation_assets(LoadedModel(None, object(), {}, None, None, "x"))
