"""The quickstart's sample corpus: captioned videos, long text documents and needle examples.

  write_corpus("quickstart_out/corpus", CorpusSizes(), seed=0)
  # -> short.jsonl (stage 1), long.jsonl (stage 2), vqgan.jsonl, clips/*.mp4,
  #    held_out_{text,video}.txt

Needle examples use the evaluation's format (lwm.eval.needle / video_needle) with keys of the
"train" split and values that are not held out: a fixed pseudo-random quarter of the values
(`is_held_out`) is never written here and is what the evaluation draws from (held_out_*.txt, passed
to scripts/eval_needle.py --values), so it asks only for unseen values with unseen keys.

What makes a 2-layer model learn retrieval within minutes on a CPU (each measured; see
docs/quickstart.md):
- the prompt (haystack, needle, question) is the manifest's `prompt`, not trained on: every
  gradient comes from the answers, not from predicting filler;
- one needle per document in digit-free filler, so retrieval is "find the one number and copy it"
  (no key matching, the skill the one-needle evaluation measures);
- stage 1's document and video lengths spread log-uniformly up to its context, so short examples
  teach the skill quickly and long ones stretch it to the whole context; stage 2's cover the long
  range (a quarter of its context to all of it) uniformly, and half of them fill its top tenth, so
  needles at either end of a full-length context are trained too (log-uniform, a needle in the
  last frames of a 2048-token video was never answered: 0.00 at depth 100);
- text values of three digits: a held-out value is a new combination of digit pairs that training
  has seen, so copying is not fought by a learnt "these digits never follow" prior (with two digits
  every held-out value is a pair the model was taught never to write).
Two of the long-context tasks (scripts/eval_long.py) get examples in their evaluation format, with
the same held-out values: niah_multivalue (one key, four values, all asked; RULER's wording) and
video_order (two numbers to give in the order shown). Both are "find every number and copy them in
order", the skill the single needle teaches, so a small model can learn them within the budget.
Videos are written losslessly at the VQGAN's resolution so a needle frame's codes in training
match those of a freshly rendered `needle_frame`; a video value has two digits, which fill a
16-pixel frame.

Reading is taught on every number, retrieval only on training values: the captioned number videos
(`digit_example`) show all two-digit values, held-out ones included, while no needle or order
example (and so no trained answer to a question) holds a held-out value. A 2-layer model does not
read a digit pair whose codes it never saw: the VQGAN's codes mix the two digits, so a held-out
pair is a new code pattern: trained on training values only, the model found and read training
values at 2048 tokens but misread one digit of most held-out ones (docs/quickstart.md). What
evaluation measures is finding the frame and reading it, with values no retrieval example used.
"""
import dataclasses
import functools
import json
import os
import zlib

import numpy as np

from lwm.eval import needle, ruler, video_needle, video_tasks

FRAME_SIZE = 16   # the tiny VQGAN's resolution
TEXT_DIGITS = 3   # chance on held-out text values: 1 / ~225
VIDEO_DIGITS = 2  # two digits fill a 16-pixel frame; chance 1 / ~22
MULTIVALUE = 4    # values per key in niah_multivalue (RULER's)
ORDER_NEEDLES = 2  # numbers to put in order in video_order (the evaluation's --needles)
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 230),
           "yellow": (240, 220, 40), "white": (250, 250, 250), "purple": (160, 60, 200)}
SHAPES = ("square", "disc", "bar")


def is_held_out(value: str) -> bool:
  """Values kept for evaluation: a fixed pseudo-random quarter (by CRC-32), so no digit pattern
  tells them apart from training values."""
  return zlib.crc32(value.encode()) % 4 == 0


@functools.cache  # drawn from for every example
def value_pool(held_out: bool, digits: int) -> tuple:
  """Every `digits`-digit value (no leading 0) that is (or is not) held out."""
  values = (str(v) for v in range(10 ** (digits - 1), 10 ** digits))
  return tuple(v for v in values if is_held_out(v) == held_out)


@dataclasses.dataclass(frozen=True)
class Span:
  """Counts of sentences or frames in [low, high] (inclusive), drawn log-uniformly (as many
  documents of 2-4 sentences as of 50-100: short ones teach the skill, long ones stretch it) or
  uniformly (every length, up to the context, equally often); `top_share` of them come from the
  top tenth of the range instead (examples that fill the context)."""
  low: int
  high: int
  uniform: bool = False
  top_share: float = 0.0


def draw_count(rng: np.random.Generator, span: Span) -> int:
  if span.top_share and rng.random() < span.top_share:
    return int(rng.integers(span.high - (span.high - span.low) // 10, span.high + 1))
  if span.uniform:
    return int(rng.integers(span.low, span.high + 1))
  top = min(span.high, int(np.exp(rng.uniform(np.log(span.low + 1), np.log(span.high + 1)))))
  return int(rng.integers(max(span.low, top // 2), max(span.low, top) + 1))


@dataclasses.dataclass(frozen=True)
class CorpusSizes:
  """How many examples of each kind; sentence and frame ranges per stage (inclusive; a sentence is
  ~15 tokens and a frame 17 with the quickstart's tokenizers, so the longest examples fill 512 and
  2048 tokens); stage 1 draws them log-uniformly, stage 2 uniformly with half in the top tenth
  (`Span`)."""
  short_text: int = 12000         # stage 1 needle documents
  long_text: int = 3000           # stage 2 needle documents
  plain_text: int = 40            # long documents without a needle (stage 2)
  short_video: int = 12000        # stage 1 video needles
  long_video: int = 2500          # stage 2 video needles
  caption_video: int = 150        # moving shapes with a caption (both stages)
  digit_video: int = 2500         # frames showing numbers, captioned with them (both stages)
  short_multivalue: int = 3000    # niah_multivalue documents (eval_long's format), stage 1
  long_multivalue: int = 600      # and stage 2
  short_video_order: int = 3000   # video_order examples (ORDER_NEEDLES numbers), stage 1
  long_video_order: int = 500     # and stage 2
  vqgan_digit_video: int = 1500   # extra number-only videos for the VQGAN's manifest (vqgan.jsonl)
  short_sentences: Span = Span(0, 30)
  long_sentences: Span = Span(30, 130, uniform=True, top_share=0.5)  # stage 2: the long range
  short_frames: Span = Span(2, 28)
  long_frames: Span = Span(28, 118, uniform=True, top_share=0.5)


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

def train_value(rng: np.random.Generator, digits: int) -> str:
  pool = value_pool(held_out=False, digits=digits)
  return pool[int(rng.integers(len(pool)))]


def text_needle_example(rng: np.random.Generator, sentences: Span) -> dict:
  """One needle (a "train" key, a value not held out) at a random sentence boundary of digit-free
  filler; the prompt is the evaluation's (`needle.format_prompt`), the text its answer."""
  count = draw_count(rng, sentences)
  filler = needle.synthetic_haystack(count, seed=int(rng.integers(1 << 30))).split(". ")
  keys = needle.needle_keys("train")
  key, value = keys[int(rng.integers(len(keys)))], train_value(rng, TEXT_DIGITS)
  parts = [s.rstrip(".") + "." for s in filler if s]
  parts.insert(int(rng.integers(0, len(parts) + 1)), needle.text_needle_sentence(key, value))
  prompt = needle.format_prompt(" ".join(parts), needle.text_question(key))
  return {"prompt": prompt, "text": needle.text_answer(value)}


def video_needle_example(rng: np.random.Generator, frames: Span, root: str, name: str) -> dict:
  """A digit frame at a random place among moving-shape frames, asked about as in evaluation."""
  count = draw_count(rng, frames)
  value = train_value(rng, VIDEO_DIGITS)
  video = haystack(rng, count - 1)
  at = int(rng.integers(0, count))
  video = np.concatenate([video[:at], video_needle.needle_frame(value, FRAME_SIZE)[None],
                          video[at:]])
  write_lossless(os.path.join(root, name), video)
  return {"video": name, "prompt": needle.question_suffix(video_needle.video_question()),
          "text": needle.text_answer(value), "order": "video_text"}


def multivalue_example(rng: np.random.Generator, sentences: Span) -> dict:
  """RULER's niah_multivalue in eval_long's format: one key with MULTIVALUE values (not held out)
  at random boundaries of digit-free filler; the answer lists them in order. The instruction,
  needles and question take ~8 sentences' tokens, so the filler has that many fewer."""
  count = draw_count(rng, dataclasses.replace(sentences, low=max(0, sentences.low - 8),
                                              high=max(1, sentences.high - 8)))
  filler = needle.synthetic_haystack(count, seed=int(rng.integers(1 << 30))).split(". ")
  parts = [s.rstrip(".") + "." for s in filler if s]
  [key] = ruler.draw(rng, "words", 1)
  values = needle.draw_values(rng, MULTIVALUE, values=value_pool(False, TEXT_DIGITS))
  return ruler.niah_training_example(rng, parts, [key], values, asked=1)


def video_order_example(rng: np.random.Generator, frames: Span, root: str, name: str) -> dict:
  """ORDER_NEEDLES digit frames among moving shapes; the answer lists their numbers in order."""
  count = max(draw_count(rng, frames), ORDER_NEEDLES + 1)
  values = needle.draw_values(rng, ORDER_NEEDLES, values=value_pool(False, VIDEO_DIGITS))
  video = list(haystack(rng, count - ORDER_NEEDLES))
  at = np.sort(rng.integers(0, len(video) + 1, ORDER_NEEDLES))
  for shift, (index, value) in enumerate(zip(at, values)):
    video.insert(int(index) + shift, video_needle.needle_frame(value, FRAME_SIZE))
  write_lossless(os.path.join(root, name), np.stack(video))
  return {"video": name, "prompt": needle.question_suffix(video_tasks.ORDER_QUESTION),
          "text": needle.text_answer(values), "order": "video_text"}


def caption_example(rng: np.random.Generator, root: str, name: str) -> dict:
  frames, caption = shape_frames(rng, int(rng.integers(6, 16)))
  write_lossless(os.path.join(root, name), frames)
  return {"video": name, "text": caption, "order": "video_text"}


def digit_example(rng: np.random.Generator, root: str, name: str) -> dict:
  """Frames that each show a number, captioned with the numbers: the VQGAN sees many digit frames
  and the model learns to read them, every value, held-out ones included (see the module's
  docstring)."""
  every = value_pool(False, VIDEO_DIGITS) + value_pool(True, VIDEO_DIGITS)
  values = [every[int(rng.integers(len(every)))] for _ in range(int(rng.integers(2, 7)))]
  frames = np.stack([video_needle.needle_frame(v, FRAME_SIZE) for v in values])
  write_lossless(os.path.join(root, name), frames)
  return {"video": name, "text": "The numbers shown are " + ", ".join(values) + ".",
          "order": "video_text"}


def plain_document(rng: np.random.Generator, sentences: Span) -> dict:
  count = int(rng.integers(max(sentences.low, 1), sentences.high + 1))
  return {"text": needle.synthetic_haystack(count, seed=int(rng.integers(1 << 30)))}


# ------------------------------------------------------------------------------------ Generation

GENERATION_FRAMES = 2  # frames of a number video to generate (scripts/eval_generation.py --frames)


def write_generation_corpus(root: str) -> str:
  """ROOT/generate.jsonl and its clips: LWM's text -> image and text -> video pairs for every
  training value (`text_video`: only the frames are trained on). "Generate an image of the number
  40" comes before one frame showing 40, "Generate a video of the number 40" before
  GENERATION_FRAMES of them: LWM's two prompts (`vision_generation`), which generation feeds
  (the first frame from the image prompt, the others after the video prompt). Held-out values are
  never asked for here; they are what the evaluation asks for. Returns the manifest's path."""
  from lwm.eval import generation_eval
  from lwm.eval import vision_generation as vg
  os.makedirs(os.path.join(root, "clips"), exist_ok=True)
  records = []
  for value in value_pool(held_out=False, digits=VIDEO_DIGITS):
    frame = video_needle.needle_frame(value, FRAME_SIZE)
    subject = generation_eval.SUBJECT.format(value)
    for kind, template, count in (("image", vg.IMAGE_PROMPT, 1),
                                  ("video", vg.VIDEO_PROMPT, GENERATION_FRAMES)):
      name = f"clips/{kind}_{value}.mp4"
      write_lossless(os.path.join(root, name), np.repeat(frame[None], count, 0))
      records.append({"video": name, "text": template.format(subject), "order": "text_video"})
  return write_manifest(os.path.join(root, "generate.jsonl"), records)


# ------------------------------------------------------------------------------------ V-NIAH

VNIAH_NEEDLES = 5  # LongVA's needle set has 5 images


def vniah_needles(root: str, count: int = VNIAH_NEEDLES, size: int = FRAME_SIZE,
                  seed: int = 0) -> str:
  """The default needle set of `eval_needle.py --protocol vniah`: `count` frames showing held-out
  numbers (values no retrieval example used), written as PNGs with ROOT/needles.jsonl in LongVA's
  {"image", "question", "answer"} form. Question and answer are the quickstart's video needle
  format, so its model is asked as it was trained. Returns the JSONL's path."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  pool = value_pool(held_out=True, digits=VIDEO_DIGITS)
  values = [pool[i] for i in rng.choice(len(pool), count, replace=False)]
  os.makedirs(root, exist_ok=True)
  rows = []
  for i, value in enumerate(values):
    name = f"needle_{i}_{value}.png"
    Image.fromarray(video_needle.needle_frame(value, size)).save(os.path.join(root, name))
    rows.append({"image": name, "question": needle.question_suffix(video_needle.video_question()),
                 "answer": needle.text_answer(value)})
  return write_manifest(os.path.join(root, "needles.jsonl"), rows)


def vniah_haystack(num_frames: int, size: int = FRAME_SIZE, seed: int = 0) -> np.ndarray:
  """The default V-NIAH haystack: `num_frames` frames without digits (a moving square or shape,
  as around the corpus's needles), uint8 `[n, size, size, 3]`."""
  return haystack(np.random.default_rng(seed), num_frames, size)


# ------------------------------------------------------------------------------------ Corpus

def write_manifest(path: str, records: list) -> str:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  os.replace(tmp, path)  # a manifest exists only when complete, so a rerun can skip this step
  return path


def write_corpus(root: str, sizes: CorpusSizes = CorpusSizes(), seed: int = 0,
                 progress: bool = True) -> dict:
  """Writes ROOT/short.jsonl, ROOT/long.jsonl, ROOT/vqgan.jsonl, ROOT/clips/ and the held-out value
  pools ROOT/held_out_text.txt, ROOT/held_out_video.txt; returns {name: path}."""
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
  for stage, texts, videos, sentences, frames, multivalue, ordered in (
      ("short", sizes.short_text, sizes.short_video, sizes.short_sentences, sizes.short_frames,
       sizes.short_multivalue, sizes.short_video_order),
      ("long", sizes.long_text, sizes.long_video, sizes.long_sentences, sizes.long_frames,
       sizes.long_multivalue, sizes.long_video_order)):
    records = list(shared)
    records += [text_needle_example(rng, sentences) for _ in range(texts)]
    records += [multivalue_example(rng, sentences) for _ in range(multivalue)]
    for i in tqdm(range(videos), desc=f"corpus {stage} video needles", disable=not progress):
      records.append(video_needle_example(rng, frames, root, f"clips/{stage}_needle_{i:05d}.mp4"))
    for i in tqdm(range(ordered), desc=f"corpus {stage} video order", disable=not progress):
      records.append(video_order_example(rng, frames, root, f"clips/{stage}_order_{i:05d}.mp4"))
    if stage == "long":
      records += [plain_document(rng, sentences) for _ in range(sizes.plain_text)]
    records = [records[i] for i in rng.permutation(len(records))]
    manifests[stage] = write_manifest(os.path.join(root, f"{stage}.jsonl"), records)
  # The VQGAN's manifest: every number-only video (the shared ones and more) and the captioned
  # shapes, so digit frames are most of what it learns to reconstruct.
  extra = [digit_example(rng, root, f"clips/vqgan_digits_{i:05d}.mp4")
           for i in tqdm(range(sizes.vqgan_digit_video), desc="corpus VQGAN digit videos",
                         disable=not progress)]
  manifests["vqgan"] = write_manifest(os.path.join(root, "vqgan.jsonl"), shared + extra)
  for mode, digits in (("text", TEXT_DIGITS), ("video", VIDEO_DIGITS)):
    path = os.path.join(root, f"held_out_{mode}.txt")
    with open(path, "w") as f:
      f.write("\n".join(value_pool(held_out=True, digits=digits)) + "\n")
    manifests[f"held_out_{mode}"] = path
  return manifests
