"""Scoring generated number videos (lwm.eval.generation_eval) and the quickstart's text -> video
pairs (lwm.demo.corpus.write_generation_corpus)."""
import json
import os

import av
import numpy as np
import pytest
from PIL import Image

from lwm import vqgan as vqgan_lib
from lwm.data import text_tokenizer
from lwm.data.interleave import interleave
from lwm.demo import corpus
from lwm.eval import generation_eval as ge
from lwm.eval import video_needle
from lwm.eval import vision_generation as vg
from lwm.model import from_lwm
from lwm.vocab import Vocab

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "lwm-b")


def test_nearest_rendering_score_on_a_hand_made_case():
  black, white = np.zeros((2, 2, 3)), np.full((2, 2, 3), 255.0)
  grey = np.full((2, 2, 3), 100.0)
  renderings = {"0": black, "1": white, "2": grey}
  videos = np.stack([
      np.stack([black, black]),  # asked "0": exact -> hit
      np.stack([white, np.full((2, 2, 3), 200.0)]),  # asked "1": 55^2 / 2 from white -> hit
      np.stack([black, black]),  # asked "2": black is nearer -> miss
      np.stack([np.full((2, 2, 3), 50.0)] * 2),  # asked "0": 50^2 from black ties grey -> miss
  ])
  score, nearest, hits = ge.nearest_rendering_score(videos, ["0", "1", "2", "0"], renderings)
  assert score == 0.5 and hits == [True, True, False, False]
  assert nearest[:3] == ["0", "1", "0"]
  with pytest.raises(ValueError, match=r"no rendering of asked label\(s\) \['7'\]"):
    ge.nearest_rendering_score(videos[:1], ["7"], renderings)


def test_frame_strip_lays_videos_in_rows_and_frames_in_columns():
  videos = np.arange(2 * 3 * 2 * 2 * 3, dtype=np.uint8).reshape(2, 3, 2, 2, 3)
  strip = ge.frame_strip(videos, gap=1)
  assert strip.shape == (2 * 2 + 1, 3 * 2 + 2, 3)
  np.testing.assert_array_equal(strip[3:5, 6:8], videos[1, 2])
  assert np.all(strip[2] == 255) and np.all(strip[:, 2] == 255)


def test_number_labels_are_every_number_of_the_asked_digit_count():
  assert ge.number_labels(["17", "40"]) == [str(v) for v in range(10, 100)]
  with pytest.raises(ValueError, match="one digit count"):
    ge.number_labels(["7", "40"])


class StubTokenizer:
  """Just what prompt_ids reads: a BOS and an `encode` (bytes folded into ids 10..59)."""
  bos_token_id = 1

  def encode(self, text, add_special_tokens=False):
    return [10 + b % 50 for b in text.encode()]


def test_run_number_generation_writes_a_score_its_strip_agrees_with(tmp_path):
  """On LWM's fixture model and VQGAN (32x32 frames): the score and nearest numbers in
  results.json are recomputed in float64 from the strip PNG read back, against the renderings."""
  model = from_lwm(os.path.join(FIXTURE, "params"), os.path.join(FIXTURE, "config.json"))
  decoder = vqgan_lib.from_lwm(os.path.join(FIXTURE, "vqgan"),
                               os.path.join(FIXTURE, "vqgan_config.json"))
  vocab = Vocab(bos=1, eos=2, vision_start=(7,), vision_end=(8,), codebook_size=128)
  values = ["17", "40", "93"]
  result = ge.run_number_generation(model, StubTokenizer(), vocab, decoder, values=values,
                                    output=str(tmp_path), frames=2)
  with open(tmp_path / "results.json") as f:
    assert json.load(f) == result
  assert result["chance"] == 1 / 90 and [s["asked"] for s in result["samples"]] == values
  strip = np.asarray(Image.open(tmp_path / "strip.png").convert("RGB"), np.float64)
  side, scale = 32, ge.STRIP_SCALE
  cell = side * scale + 1  # a frame and its gap
  labels = [str(v) for v in range(10, 100)]
  table = np.stack([video_needle.needle_frame(v, side) for v in labels]).astype(np.float64)
  hits = []
  for row, sample in enumerate(result["samples"]):
    top = row * cell  # the asked number's rendering, then the 2 generated frames
    frames = [strip[top:top + side * scale:scale, f * cell:f * cell + side * scale:scale]
              for f in range(3)]
    np.testing.assert_array_equal(frames[0], table[labels.index(sample["asked"])])
    distance = np.mean([((table - frame) ** 2).mean(axis=(1, 2, 3)) for frame in frames[1:]], 0)
    own = distance[labels.index(sample["asked"])]
    hits.append(bool(own < np.delete(distance, labels.index(sample["asked"])).min()))
    assert sample["nearest"] == labels[int(np.argmin(distance))] and sample["hit"] == hits[-1]
  assert result["score"] == np.mean(hits)


def test_the_generation_corpus_asks_for_training_numbers_as_generation_prompts_them(tmp_path):
  """Every training number (never a held-out one) once as an image and once as a video, its frames
  decoding to the number's rendering; the record's tokens begin with the prompt that generation
  feeds (`vision_generation.prompt_ids`)."""
  manifest = corpus.write_generation_corpus(str(tmp_path))
  with open(manifest) as f:
    records = [json.loads(line) for line in f]
  training = corpus.value_pool(held_out=False, digits=corpus.VIDEO_DIGITS)
  asked = [r["text"].split("the number ")[1].split()[0] for r in records]
  assert sorted(asked) == sorted(training * 2) and not any(corpus.is_held_out(v) for v in asked)
  tokenizer = text_tokenizer.load_tokenizer(text_tokenizer.train_tokenizer(
      [r["text"] for r in records] * 20, str(tmp_path / "tok.model"), vocab_size=400))
  vocab = Vocab.for_tokenizer(tokenizer, 64)
  for record in records[:4]:
    with av.open(str(tmp_path / record["video"])) as container:
      frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    value = record["text"].split("the number ")[1].split()[0]
    count = 1 if "an image" in record["text"] else corpus.GENERATION_FRAMES
    assert len(frames) == count and record["order"] == "text_video"
    side = corpus.FRAME_SIZE  # written padded to twice its width: the data stage's centre crop
    for frame in frames:
      np.testing.assert_array_equal(frame[:, side // 2:side // 2 + side].mean(-1),
                                    video_needle.needle_frame(value, side).mean(-1))
    image, video, _ = vg.prompt_ids(tokenizer, vocab, ge.SUBJECT.format(value))
    fed = image if count == 1 else video
    tokens = interleave(tokenizer.encode(record["text"], add_special_tokens=False),
                        np.zeros((count, 4), np.int32), record["order"], vocab)["tokens"]
    assert list(tokens[:len(fed)]) == list(fed)
