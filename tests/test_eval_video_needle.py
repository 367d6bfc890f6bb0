"""Video needle: frames counted from the context in tokens, the needle frame at its depth."""
import json
import os

import numpy as np
import pytest

import eval_testing
from lwm.data import synthetic
from lwm.eval import video_needle
from lwm.model_dir import LoadedModel


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("video"))
  tokenizer, encoder, vocab = eval_testing.video_parts(root)
  return root, tokenizer, encoder, vocab


def test_needle_frame_shows_the_digits():
  frame = video_needle.needle_frame("407", 64)
  assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
  lit = frame[..., 0] > 0
  rows, cols = np.nonzero(lit)
  # 3 glyphs of 3x5 pixels and 2 gaps -> 11 x 5 cells, scaled by (64 - 2) // 11 = 5, centred.
  assert (cols.max() - cols.min() + 1, rows.max() - rows.min() + 1) == (55, 25)
  assert abs((cols.min() + cols.max()) / 2 - 31.5) <= 1
  assert not np.array_equal(frame, video_needle.needle_frame("408", 64))
  assert video_needle.needle_frame("12", 16).shape == (16, 16, 3)
  with pytest.raises(ValueError, match=r"4 digits need frames of at least 17 pixels, got size=16"):
    video_needle.needle_frame("1234", 16)


@pytest.mark.parametrize("context_length", [300, 2000])
@pytest.mark.parametrize("depth", [0, 25, 50, 75, 100])
def test_frames_fill_the_context_and_the_needle_sits_at_the_depth(parts, context_length, depth):
  _, tokenizer, encoder, vocab = parts
  per_frame = encoder.config.codes_per_frame + 1
  overhead = video_needle.prompt_overhead(tokenizer, vocab)
  frames = video_needle.frames_in_context(context_length, encoder.config.codes_per_frame, overhead)
  haystack = encoder(video_needle.haystack_frames(frames - 1, encoder.config.resolution, seed=1))
  needle = encoder(video_needle.needle_frame("58", encoder.config.resolution)[None])
  prompt = video_needle.build_video_prompt(tokenizer, vocab, haystack, needle, depth)
  # As many whole frames as fit: the prompt is within one frame of the context length.
  assert context_length - per_frame < len(prompt.tokens) <= context_length
  assert prompt.vision_mask.sum() == frames * per_frame
  # The needle's codes start at its position, a whole number of frames into the video, which is
  # depth% of the haystack's tokens (to within half a frame).
  pos = prompt.needle_position
  np.testing.assert_array_equal(prompt.tokens[pos:pos + needle.shape[1]], needle[0])
  video_start = int(np.argmax(prompt.vision_mask))
  assert (pos - video_start) % per_frame == 0
  haystack_tokens = (frames - 1) * per_frame
  half_frame = 50 * per_frame / haystack_tokens
  assert abs(100 * (pos - video_start) / haystack_tokens - depth) <= half_frame + 1e-9
  # Layout: BOS <vision> frames <eov> </vision> question; frames end with <eof>, the last <eov>.
  video = prompt.tokens[prompt.vision_mask].reshape(frames, per_frame)
  assert np.all(video[:-1, -1] == vocab.eof) and video[-1, -1] == vocab.eov
  assert prompt.tokens[0] == tokenizer.bos_token_id
  assert list(prompt.tokens[1:video_start]) == list(vocab.vision_start)
  assert tokenizer.decode(prompt.tokens[video_start + frames * per_frame:]).endswith(
      "Question: What number is shown in the video? Answer:")


def test_haystack_from_a_video_file_and_from_a_manifest(parts, tmp_path):
  size = 16
  synthetic.write_video(str(tmp_path / "a.mp4"), synthetic.moving_frames(12, 48, 64, seed=1))
  synthetic.write_video(str(tmp_path / "b.mp4"), synthetic.moving_frames(6, 48, 64, seed=2))
  frames = video_needle.haystack_frames(20, size, video=str(tmp_path / "a.mp4"))
  assert frames.shape == (20, size, size, 3)  # 12 frames in the file, repeated to fill
  np.testing.assert_array_equal(frames[12:], frames[:8])
  manifest = tmp_path / "m.jsonl"
  manifest.write_text("\n".join(json.dumps(r) for r in [
      {"video": "a.mp4", "text": "x"}, {"text": "only text"}, {"video": "missing.mp4"},
      {"video": "b.mp4"}]) + "\n")
  frames = video_needle.haystack_frames(14, size, manifest=str(manifest), clip_frames=8)
  assert frames.shape == (14, size, size, 3)  # 8 of a.mp4, then the 6 of b.mp4


class WrongGenerator:
  """Answers 0 every time; counts calls and records the prompts' lengths."""

  def __init__(self, tokenizer):
    self.tokenizer, self.lengths = tokenizer, []

  def __call__(self, prompts, vision_masks, **kwargs):
    self.lengths.append(len(prompts[0]))
    assert vision_masks[0].sum() > 0
    return [self.tokenizer.encode(" 0", add_special_tokens=False)]


def test_video_grid_records_every_cell_and_resumes(parts, tmp_path):
  _, tokenizer, encoder, _ = parts
  loaded = LoadedModel(None, tokenizer, {}, None, None, "fake")
  wrong = WrongGenerator(tokenizer)
  kwargs = dict(output=str(tmp_path / "out"), context_lengths=[400, 800], depths=[0, 50, 100],
                progress=False, encoder=encoder)
  summary = video_needle.run_video_needle(loaded, generator=wrong, **kwargs)
  assert summary["accuracy"] == 0.0 and len(wrong.lengths) == 6
  cells = json.load(open(tmp_path / "out" / "results.json"))
  assert all(len(c["expected"]) == 3 and c["answer"] == "0" and c["score"] == 0 for c in cells)
  assert all(c["context_length"] - 17 < c["prompt_tokens"] <= c["context_length"] for c in cells)
  assert os.path.getsize(tmp_path / "out" / "heatmap.png") > 1000
  again = WrongGenerator(tokenizer)
  assert video_needle.run_video_needle(loaded, generator=again, **kwargs)["skipped"] == 6
  assert again.lengths == []


def test_a_given_needle_image_is_scored_against_its_answer(parts, tmp_path):
  from PIL import Image
  _, tokenizer, encoder, _ = parts
  Image.fromarray(video_needle.needle_frame("77", 32)).save(tmp_path / "needle.png")
  loaded = LoadedModel(None, tokenizer, {}, None, None, "fake")
  right = lambda prompts, masks, **kw: [tokenizer.encode(" 77", add_special_tokens=False)]
  summary = video_needle.run_video_needle(
      loaded, output=str(tmp_path / "out"), context_lengths=[400], depths=[50], encoder=encoder,
      needle_image=str(tmp_path / "needle.png"), needle_answer="77", needle_frames=2,
      progress=False, generator=right)
  assert summary["accuracy"] == 1.0


def test_training_text_continues_the_prompt_with_the_answer(parts):
  _, tokenizer, _, _ = parts
  from lwm.eval import needle
  suffix = tokenizer.encode(needle.question_suffix(video_needle.VIDEO_QUESTION),
                            add_special_tokens=False)
  assert tokenizer.encode(video_needle.video_example_text("481"), add_special_tokens=False) == (
      suffix + tokenizer.encode(needle.text_answer("481"), add_special_tokens=False))
