"""Video needle in a haystack: a frame showing a number hidden at a depth of a long video, asked
about in text. The format is shared with training (the data stage's `video_text` layout):

  prompt:  BOS <vision> f1 <eof> f2 <eof> ... fN <eov> </vision> Question: {question} Answer:
  answer:  " {value}" then EOS        (training text: video_example_text(value))

With a chat template (lwm.data.chat) the prompt without BOS is the user's message, the template's
text around it.

Context lengths are in tokens like text: a frame is `codes_per_frame + 1` tokens (its codes and
<eof>/<eov>), so a context of C tokens holds (C - BOS, markers and question) // tokens_per_frame
frames, the needle's included. The needle goes before haystack frame round(depth% x frames): its
depth in tokens is exact at frame granularity.
"""
import dataclasses
import json
import os

import numpy as np

from lwm.data import chat
from lwm.data.interleave import Vocab, vision_tokens
from lwm.eval import grid, needle

VIDEO_QUESTION = "What number is shown in the video?"

# A 3x5 pixel font for the digits, row by row ('#' lit).
_DIGITS = {
    "0": ("###", "#.#", "#.#", "#.#", "###"), "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"), "3": ("###", "..#", "###", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"), "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"), "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"), "9": ("###", "#.#", "###", "..#", "###"),
}


def needle_frame(value: str, size: int, *, color=(255, 255, 255),
                 background=(0, 0, 0)) -> np.ndarray:
  """uint8 `[size, size, 3]`: the digits of `value` drawn as large as fit, centred."""
  if not value or not value.isdigit():
    raise ValueError(f"needle_frame draws digits only, got {value!r}")
  glyphs = [np.array([[c == "#" for c in row] for row in _DIGITS[d]]) for d in value]
  gap = np.zeros((5, 1), bool)
  mask = np.concatenate([part for g in glyphs for part in (g, gap)][:-1], axis=1)
  scale = min((size - 2) // mask.shape[1], (size - 2) // mask.shape[0])
  if scale < 1:
    raise ValueError(f"{len(value)} digits need frames of at least {mask.shape[1] + 2} pixels, "
                     f"got size={size}")
  mask = np.kron(mask, np.ones((scale, scale), bool))
  frame = np.empty((size, size, 3), np.uint8)
  frame[:] = background
  top, left = (size - mask.shape[0]) // 2, (size - mask.shape[1]) // 2
  frame[top:top + mask.shape[0], left:left + mask.shape[1]][mask] = color
  return frame


def video_question() -> str:
  return VIDEO_QUESTION


def video_example_text(value: str, question: str = VIDEO_QUESTION) -> str:
  """The text that follows the video in a training example (order video_text)."""
  return needle.question_suffix(question) + needle.text_answer(value)


def vocab_for(tokenizer, codebook_size: int, recorded: dict | None = None) -> Vocab:
  """The interleaver's ids, as the data stage builds them; `recorded` (a model's vocab.json)
  gives the `<eof>`/`<eov>` ids it was trained with when it records them for this codebook."""
  ids = {}
  if recorded and recorded.get("codebook_size") == codebook_size:
    ids = {k: recorded[k] for k in ("eof", "eov", "vision_vocab_size") if k in recorded}
  return Vocab.for_tokenizer(tokenizer, codebook_size, **ids)


# ------------------------------------------------------------------------------------ Prompts

@dataclasses.dataclass
class VideoPrompt:
  """tokens, vision_mask: `[prompt_tokens]`. needle_position: index in `tokens` of the needle's
  first code; needle_frame_index: frames before it; needle_depth: its depth in % of the video's
  tokens (the haystack frames' tokens)."""
  tokens: np.ndarray
  vision_mask: np.ndarray
  needle_position: int
  needle_frame_index: int
  needle_depth: float
  haystack_frames: int
  question: str


def prompt_overhead(tokenizer, vocab: Vocab, question: str = VIDEO_QUESTION,
                    wrap: tuple | None = None) -> int:
  """Tokens of a video prompt that are not frames: BOS (or the chat template's `wrap`, see
  lwm.data.chat.wrap_ids), <vision>, </vision> and the question."""
  head, tail = wrap or ([vocab.bos] if vocab.bos >= 0 else [], [])
  return (len(head) + len(vocab.vision_start) + len(vocab.vision_end) + len(tail) +
          len(tokenizer.encode(needle.question_suffix(question), add_special_tokens=False)))


def frames_in_context(context_length: int, codes_per_frame: int, overhead: int) -> int:
  """How many frames (needle included) a context of `context_length` tokens holds."""
  frames = (context_length - overhead) // (codes_per_frame + 1)
  if frames < 2:
    raise ValueError(f"context_length={context_length} holds {max(frames, 0)} frames of "
                     f"{codes_per_frame + 1} tokens after {overhead} tokens of text; a needle "
                     "and a haystack need at least 2")
  return frames


def video_prompt_tokens(tokenizer, vocab: Vocab, codes: np.ndarray, question: str = VIDEO_QUESTION,
                        wrap: tuple | None = None) -> tuple[np.ndarray, np.ndarray, int]:
  """(tokens, vision_mask, index of the first frame's first code) of a question about a video
  whose frames are `codes` `[frames, codes_per_frame]`; wrap: (ids before, ids after) of a chat
  template (lwm.data.chat.wrap_ids; default: BOS before, nothing after)."""
  video = vision_tokens(codes, vocab)
  before, after = wrap or ([vocab.bos] if vocab.bos >= 0 else [], [])
  head = list(before) + list(vocab.vision_start)
  tail = (list(vocab.vision_end) +
          tokenizer.encode(needle.question_suffix(question), add_special_tokens=False) +
          list(after))
  tokens = np.concatenate([np.asarray(head, np.int32), video, np.asarray(tail, np.int32)])
  mask = np.zeros(len(tokens), bool)
  mask[len(head):len(head) + len(video)] = True
  return tokens, mask, len(head)


def build_video_prompt(tokenizer, vocab: Vocab, haystack_codes: np.ndarray,
                       needle_codes: np.ndarray, depth: float, question: str = VIDEO_QUESTION,
                       wrap: tuple | None = None) -> VideoPrompt:
  """haystack_codes `[frames, codes_per_frame]`, needle_codes `[needle_frames, codes_per_frame]`:
  the needle goes before haystack frame round(depth% x frames). wrap: see video_prompt_tokens."""
  if not 0 <= depth <= 100:
    raise ValueError(f"depth={depth} must be a percentage in [0, 100]")
  if haystack_codes.shape[1:] != needle_codes.shape[1:]:
    raise ValueError(f"needle codes {needle_codes.shape} and haystack codes {haystack_codes.shape} "
                     "must have the same codes per frame")
  frames = len(haystack_codes)
  index = int(round(depth / 100.0 * frames))
  codes = np.concatenate([haystack_codes[:index], needle_codes, haystack_codes[index:]])
  tokens, mask, start = video_prompt_tokens(tokenizer, vocab, codes, question, wrap)
  per_frame = codes.shape[1] + 1
  return VideoPrompt(tokens, mask, start + index * per_frame, index, 100.0 * index / frames,
                     frames, question)


# ------------------------------------------------------------------------------------ Haystacks

def haystack_frames(num_frames: int, size: int, *, video: str | None = None,
                    manifest: str | None = None, clip_frames: int = 8, seed: int = 0) -> np.ndarray:
  """uint8 `[num_frames, size, size, 3]`: a video sampled uniformly, a manifest's clips one after
  another (`clip_frames` each), or generated frames; repeated when there are too few."""
  from lwm.data import synthetic
  from lwm.data.video import FrameSampling, VideoError, decode_video
  if video:
    frames = decode_video(video, size, FrameSampling(max_frames=num_frames, min_frames=1))
  elif manifest:
    root, clips, total = os.path.dirname(os.path.abspath(manifest)), [], 0
    with open(manifest) as f:
      paths = [json.loads(line).get("video") for line in f if line.strip()]
    for path in (p for p in paths if p):
      if total >= num_frames:
        break
      try:
        clip = decode_video(os.path.join(root, path), size,
                            FrameSampling(max_frames=clip_frames, min_frames=1))
      except VideoError:
        continue  # a broken clip of the manifest is left out, as preprocessing does
      clips.append(clip)
      total += len(clip)
    if not clips:
      raise ValueError(f"manifest {manifest!r} has no readable video")
    frames = np.concatenate(clips)
  else:
    frames = synthetic.moving_frames(num_frames, size, size, seed=seed)
  if len(frames) != num_frames:
    frames = np.resize(frames, (num_frames,) + frames.shape[1:])  # repeats from the start
  return frames


def read_image(path: str, size: int) -> np.ndarray:
  """A needle image file (PNG, JPEG) as uint8 `[1, size, size, 3]` (short side resized, cropped)."""
  from PIL import Image
  from lwm.data.video import resize_and_crop
  image = np.asarray(Image.open(path).convert("RGB"), np.uint8)
  return resize_and_crop(image[None], size)


# ------------------------------------------------------------------------------------ The grid

def tokenizer_and_encoder(loaded, encoder, what: str):
  """The model's text tokenizer and frame encoder (`encoder`, or its VQGAN), or an error naming
  the flag that gives the missing one."""
  from lwm import vqgan
  if loaded.tokenizer is None:
    raise ValueError(f"{what} needs the model's text tokenizer: pass --tokenizer PATH")
  if encoder is None:
    if not loaded.vqgan_dir:
      raise ValueError(f"{what} needs the VQGAN the model was trained with: pass --vqgan DIR")
    encoder = vqgan.FrameEncoder(vqgan.load(loaded.vqgan_dir))
  return loaded.tokenizer, encoder


def run_video_needle(loaded, *, output: str, context_lengths, depths, rounds: int = 1,
                     video: str | None = None, manifest: str | None = None,
                     needle_image: str | None = None, needle_answer: str | None = None,
                     needle_frames: int = 1, digits: int = 3, values=None, seed: int = 0,
                     max_new_tokens: int | None = None, temperature: float = 0.0,
                     top_p: float = 1.0, progress: bool = True, generator=None,
                     encoder=None, chat_template: str = "auto") -> dict:
  """Runs (or resumes) the video needle grid; writes OUT/results.json and OUT/heatmap.png.

  loaded: a `lwm.model_dir.LoadedModel` with a tokenizer and a VQGAN directory (or pass a
  `lwm.vqgan.FrameEncoder` as `encoder`). The haystack is `video`, the clips of `manifest`, or
  generated frames. The needle is a frame showing a random `digits`-digit number (new each round;
  drawn from `values` when given), or `needle_image` with its `needle_answer`, shown for
  `needle_frames` frames. max_new_tokens: default needle.MAX_NEW_TOKENS. chat_template: auto,
  none, lwm or a Jinja file (lwm.data.chat).
  """
  from lwm.eval import inference
  tokenizer, encoder = tokenizer_and_encoder(loaded, encoder, "the video needle")
  if needle_image and not needle_answer:
    raise ValueError("--needle-image needs --needle-answer (what the image shows)")
  size, per_frame = encoder.config.resolution, encoder.config.codes_per_frame
  vocab = vocab_for(tokenizer, encoder.config.codebook_size, loaded.vocab)
  generator = generator or inference.Generator(loaded.model)
  settings = dict(mode="video", video=video, manifest=manifest, needle_image=needle_image,
                  needle_answer=needle_answer, needle_frames=needle_frames, digits=digits,
                  values=None if values is None else sorted(set(values)), seed=seed,
                  temperature=temperature, top_p=top_p, source=loaded.source,
                  **chat.run_setting(tokenizer, chat_template))
  results = grid.Results(output, settings)
  wrap = chat.wrap_ids(tokenizer, chat_template)
  overhead = prompt_overhead(tokenizer, vocab, wrap=wrap)
  haystacks = {}
  fixed_needle = None
  if needle_image:
    fixed_needle = encoder(np.repeat(read_image(needle_image, size), needle_frames, 0))
  max_new_tokens = max_new_tokens or needle.MAX_NEW_TOKENS

  def haystack_codes(context_length):
    if context_length not in haystacks:
      count = frames_in_context(context_length, per_frame, overhead) - needle_frames
      haystacks[context_length] = encoder(haystack_frames(count, size, video=video,
                                                          manifest=manifest, seed=seed))
    return haystacks[context_length]

  def evaluate(cell):
    if fixed_needle is not None:
      expected, needle_codes = needle_answer, fixed_needle
    else:
      [expected] = needle.draw_values(needle.cell_rng(seed, cell), 1, digits=digits, values=values)
      needle_codes = encoder(np.repeat(needle_frame(expected, size)[None], needle_frames, 0))
    prompt = build_video_prompt(tokenizer, vocab, haystack_codes(cell["context_length"]),
                                needle_codes, cell["depth"], wrap=wrap)
    [ids] = generator([prompt.tokens], [prompt.vision_mask], max_new_tokens=max_new_tokens,
                      eos_ids=tokenizer.eos_token_ids, temperature=temperature, top_p=top_p,
                      seed=seed + cell["round"])
    answer = tokenizer.decode(ids, skip_special_tokens=True)
    return {"prompt_tokens": len(prompt.tokens), "frames": prompt.haystack_frames + needle_frames,
            "needle_position": prompt.needle_position, "needle_frame": prompt.needle_frame_index,
            "needle_depth": prompt.needle_depth, "question": prompt.question,
            "expected": expected, "answer": answer, "score": grid.score_answer(answer, [expected])}

  return grid.run_grid(results, needle.grid_cells(context_lengths, depths, rounds), evaluate,
                       title="Video needle", progress=progress)
