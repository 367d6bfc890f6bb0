"""The quickstart's sample corpus: captioned videos, long text documents and needle examples.

  write_corpus("quickstart_out/corpus", CorpusSizes(), seed=0)
  # -> short.jsonl (stage 1), long.jsonl (stage 2), clips/*.mp4

Needle examples use the evaluation's format (lwm.eval.needle / video_needle) with keys of the
"train" split and values that are not held out: a value divisible by 4 is never written here, so
the evaluation (values divisible by 4, keys of the "eval" split) asks only for unseen pairs.
Each text example holds one needle in digit-free filler followed by its question and answer, so
retrieval is "find the one number and copy it" - learnable by a small model in minutes, the same
skill the one-needle evaluation measures. Videos are written losslessly at the VQGAN's resolution
so a needle frame's codes in training match those of a freshly rendered `needle_frame`.
"""
import dataclasses
import json
import os

import numpy as np

from lwm.eval import needle, video_needle

FRAME_SIZE = 16  # the tiny VQGAN's resolution
DIGITS = 2       # two-digit values: chance is 1/90, far below the control's bound of 0.1
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 230),
           "yellow": (240, 220, 40), "white": (250, 250, 250), "purple": (160, 60, 200)}
SHAPES = ("square", "disc", "bar")


def is_held_out(value: str) -> bool:
  """Values kept for evaluation: those divisible by 4 (in text and video alike)."""
  return int(value) % 4 == 0


def value_pool(held_out: bool, digits: int = DIGITS) -> tuple:
  """Every `digits`-digit value (no leading 0) that is (or is not) held out."""
  values = (str(v) for v in range(10 ** (digits - 1), 10 ** digits))
  return tuple(v for v in values if is_held_out(v) == held_out)


@dataclasses.dataclass(frozen=True)
class CorpusSizes:
  """How many examples of each kind; frame and sentence ranges per stage (inclusive)."""
  short_text: int = 6000          # stage 1 needle documents
  long_text: int = 600            # stage 2 needle documents
  plain_text: int = 40            # long documents without a needle (stage 2)
  short_video: int = 1500         # stage 1 video needles
  long_video: int = 300           # stage 2 video needles
  caption_video: int = 150        # moving shapes with a caption (both stages)
  digit_video: int = 150          # frames showing numbers, captioned with them (both stages)
  short_sentences: tuple = (2, 30)
  long_sentences: tuple = (40, 150)
  short_frames: tuple = (6, 26)
  long_frames: tuple = (30, 110)


# ------------------------------------------------------------------------------------ Frames

def shape_frames(rng: np.random.Generator, num_frames: int, size: int = FRAME_SIZE) -> tuple:
  """(uint8 `[n, size, size, 3]`, caption): a coloured shape moving over a coloured gradient."""
  name, shape = rng.choice(list(COLOURS)), SHAPES[int(rng.integers(len(SHAPES)))]
  y, x = np.mgrid[0:size, 0:size]
  tint = rng.integers(0, 120, 3)
  background = np.stack([tint[0] + x * 4, tint[1] + y * 4, np.full_like(x, tint[2])], -1)
  start, velocity = rng.integers(0, size, 2), rng.integers(-2, 3, 2)
  radius = int(rng.integers(2, 5))
  frames = np.repeat(background[None].clip(0, 255).astype(np.uint8), num_frames, 0)
  for t in range(num_frames):
    cy, cx = (start + t * velocity) % size
    if shape == "disc":
      mask = (y - cy) ** 2 + (x - cx) ** 2 <= radius ** 2
    elif shape == "bar":
      mask = (abs(y - cy) <= 1) & (abs(x - cx) <= radius)
    else:
      mask = (abs(y - cy) <= radius // 2 + 1) & (abs(x - cx) <= radius // 2 + 1)
    frames[t][mask] = COLOURS[name]
  direction = {(0, 0): "stays still"}.get(tuple(int(v) for v in velocity), "moves")
  return frames, f"A {name} {shape} {direction} over a coloured background."


def haystack(rng: np.random.Generator, num_frames: int, size: int = FRAME_SIZE) -> np.ndarray:
  """Frames without digits: the evaluation's moving square (a random tint) or a moving shape."""
  from lwm.data import synthetic
  if rng.random() < 0.5:
    return synthetic.moving_frames(num_frames, size, size, seed=int(rng.integers(1 << 30)))
  return shape_frames(rng, num_frames, size)[0]


def write_lossless(path: str, frames: np.ndarray, fps: int = 10) -> str:
  """Writes `[n, s, s, 3]` frames as H.264 at quantiser 0 so that decoding at size s gives back the
  same pixels (luma exactly; digits are grey, so their chroma too). The lossy default blurs a
  16-pixel digit enough to change its VQGAN codes. decord reads only widths that are multiples of
  32, so frames are padded to 2s wide: the data stage's centre crop takes them back unresized."""
  from lwm.data import synthetic
  side = frames.shape[2]
  frames = np.pad(frames, ((0, 0), (0, 0), (side // 2, side // 2), (0, 0)), mode="edge")
  return synthetic.write_video(path, frames, "mp4", fps, options={"qp": "0", "preset": "ultrafast"})


# ------------------------------------------------------------------------------------ Examples

def train_needle(rng: np.random.Generator) -> needle.Needle:
  """A needle with a key of the "train" split and a value that is not held out."""
  keys, values = needle.needle_keys("train"), value_pool(held_out=False)
  return needle.Needle(keys[int(rng.integers(len(keys)))], values[int(rng.integers(len(values)))])


def text_needle_example(rng: np.random.Generator, sentences: tuple) -> dict:
  """One needle at a random sentence boundary of digit-free filler, then its question and answer
  (`needle.format_prompt(...) + needle.text_answer(...)`, the evaluation's prompt plus answer)."""
  count = int(rng.integers(sentences[0], sentences[1] + 1))
  filler = needle.synthetic_haystack(count, seed=int(rng.integers(1 << 30))).split(". ")
  drawn = train_needle(rng)
  at = int(rng.integers(0, len(filler) + 1))
  parts = [s.rstrip(".") + "." for s in filler]
  parts.insert(at, needle.text_needle_sentence(drawn.key, drawn.value))
  context = " ".join(parts)
  text = needle.format_prompt(context, needle.text_question(drawn.key)) + needle.text_answer(
      drawn.value)
  return {"text": text}


def video_needle_example(rng: np.random.Generator, frames: tuple, root: str, name: str) -> dict:
  """A digit frame at a random place among moving-shape frames, asked about as in evaluation."""
  count = int(rng.integers(frames[0], frames[1] + 1))
  value = value_pool(held_out=False)[int(rng.integers(len(value_pool(held_out=False))))]
  video = haystack(rng, count - 1)
  at = int(rng.integers(0, count))
  video = np.concatenate([video[:at], video_needle.needle_frame(value, FRAME_SIZE)[None],
                          video[at:]])
  write_lossless(os.path.join(root, name), video)
  return {"video": name, "text": video_needle.video_example_text(value), "order": "video_text"}


def caption_example(rng: np.random.Generator, root: str, name: str) -> dict:
  frames, caption = shape_frames(rng, int(rng.integers(6, 16)))
  write_lossless(os.path.join(root, name), frames)
  return {"video": name, "text": caption, "order": "video_text"}


def digit_example(rng: np.random.Generator, root: str, name: str) -> dict:
  """Frames that each show a number, captioned with the numbers: the VQGAN sees many digit frames
  and the model learns to read them."""
  pool = value_pool(held_out=False)
  values = [pool[int(i)] for i in rng.integers(0, len(pool), int(rng.integers(2, 7)))]
  frames = np.stack([video_needle.needle_frame(v, FRAME_SIZE) for v in values])
  write_lossless(os.path.join(root, name), frames)
  return {"video": name, "text": "The numbers shown are " + ", ".join(values) + ".",
          "order": "video_text"}


def plain_document(rng: np.random.Generator, sentences: tuple) -> dict:
  count = int(rng.integers(sentences[0], sentences[1] + 1))
  return {"text": needle.synthetic_haystack(count, seed=int(rng.integers(1 << 30)))}


# ------------------------------------------------------------------------------------ Corpus

def write_manifest(path: str, records: list) -> str:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  os.replace(tmp, path)  # a manifest exists only when complete, so a rerun can skip this step
  return path


def write_corpus(root: str, sizes: CorpusSizes = CorpusSizes(), seed: int = 0,
                 progress: bool = True) -> dict:
  """Writes ROOT/short.jsonl, ROOT/long.jsonl and ROOT/clips/; returns {manifest: path}."""
  from tqdm import tqdm
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(root, "clips"), exist_ok=True)
  shared = []
  jobs = [("caption", sizes.caption_video), ("digits", sizes.digit_video)]
  for kind, count in jobs:
    for i in tqdm(range(count), desc=f"corpus {kind} videos", disable=not progress):
      name = f"clips/{kind}_{i:05d}.mp4"
      make = caption_example if kind == "caption" else digit_example
      shared.append(make(rng, root, name))
  manifests = {}
  for stage, texts, videos, sentences, frames in (
      ("short", sizes.short_text, sizes.short_video, sizes.short_sentences, sizes.short_frames),
      ("long", sizes.long_text, sizes.long_video, sizes.long_sentences, sizes.long_frames)):
    records = list(shared)
    records += [text_needle_example(rng, sentences) for _ in range(texts)]
    for i in tqdm(range(videos), desc=f"corpus {stage} video needles", disable=not progress):
      records.append(video_needle_example(rng, frames, root, f"clips/{stage}_needle_{i:05d}.mp4"))
    if stage == "long":
      records += [plain_document(rng, sentences) for _ in range(sizes.plain_text)]
    records = [records[i] for i in rng.permutation(len(records))]
    manifests[stage] = write_manifest(os.path.join(root, f"{stage}.jsonl"), records)
  return manifests
