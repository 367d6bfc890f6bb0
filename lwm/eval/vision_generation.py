"""Text -> image and text -> video generation as LWM does it (`lwm/vision_generation.py`, f45d2b7).

The prompt is `You are a helpful assistant. USER: Generate an image of {prompt} ASSISTANT:
<vision>`; classifier-free guidance runs it against the unconditional prompt `<vision>` alone:
`logits = uncond + scale * (cond - uncond)`, with a scale, top-k and temperature for the first
frame and another set for the frames after it. A video is made in LWM's two passes: the first frame
from that image prompt, then the other frames after a new prompt, `...Generate a video of {prompt}
ASSISTANT: <vision>` followed by the first frame's codes and `<eof>` (the unconditional prompt gets
the same frame). Inside a frame only the VQGAN's codes are sampled (the vision head's other ids are
masked); every frame's `codes_per_frame` codes are followed by `<eof>`, the last by `<eov>`,
placed by rule.

Both streams run as one batch `[cond_0..cond_{n-1}, uncond_0..uncond_{n-1}]` with their own rows
of the KV cache. Prompts of different lengths need no left padding: the prefill keeps each row's
length, and generated token t of a row sits at position length + t, so every row's slot t is
filled in the same step.

  image, video, uncond = prompt_ids(tokenizer, vocab, "a red ball")
  codes = generate_codes(model, [image], [uncond], vocab, Settings(), codes_per_frame=256,
                         frames=8, video_prompts=[video])      # [1, 8, 256]
  frames = decode_frames(vqgan, codes[0])                      # uint8 [8, R, R, 3]
"""
import dataclasses
import fractions
import struct
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lwm.model import decode

IMAGE_PROMPT = "You are a helpful assistant. USER: Generate an image of {} ASSISTANT:"
VIDEO_PROMPT = "You are a helpful assistant. USER: Generate a video of {} ASSISTANT:"


@dataclasses.dataclass(frozen=True)
class Settings:
  """Sampling of the first frame (`*_image`) and of the frames after it (`*_video`); the defaults
  are those of LWM's scripts/run_sample_video.sh. temperature 0 or top_k 1 is greedy; top_k 0
  keeps every code."""
  cfg_scale_image: float = 5.0
  cfg_scale_video: float = 1.0
  top_k_image: int = 8192
  top_k_video: int = 1000
  temperature_image: float = 1.0
  temperature_video: float = 1.0

  def for_frame(self, index: int) -> tuple:
    """(scale, top_k, temperature) of frame `index`."""
    if index == 0:
      return self.cfg_scale_image, self.top_k_image, self.temperature_image
    return self.cfg_scale_video, self.top_k_video, self.temperature_video


# ------------------------------------------------------------------------------------ Prompts

def prompt_ids(tokenizer, vocab, text: str) -> tuple:
  """(image, video, unconditional) prompt ids: LWM's two sentences ending in `<vision>`, and
  `<vision>` alone, each after the tokenizer's BOS where it has one."""
  if not text.strip():
    raise ValueError("the prompt is empty; say what to generate")
  if not vocab.vision_start:
    raise ValueError("the vocabulary has no <vision> ids; this model cannot generate vision")
  bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
  sentence = lambda template: (bos + tokenizer.encode(template.format(text),
                                                      add_special_tokens=False) +
                               list(vocab.vision_start))
  return sentence(IMAGE_PROMPT), sentence(VIDEO_PROMPT), bos + list(vocab.vision_start)


def generation_assets(loaded) -> tuple:
  """(tokenizer, VQGAN, vocab) a loaded model (`lwm.model_dir.LoadedModel`) generates frames with,
  or an error naming the flag that gives the missing one."""
  from lwm import vqgan
  from lwm.eval import video_needle
  if loaded.tokenizer is None:
    raise ValueError("no tokenizer recorded for this checkpoint: pass --tokenizer PATH")
  if not loaded.vqgan_dir:
    raise ValueError("no VQGAN recorded for this checkpoint: pass --vqgan DIR")
  decoder = vqgan.load(loaded.vqgan_dir)
  vocab = video_needle.vocab_for(loaded.tokenizer, decoder.config.codebook_size, loaded.vocab)
  return loaded.tokenizer, decoder, vocab


# ------------------------------------------------------------------------------------ Math

def guided_logits(cond, uncond, scale):
  """Classifier-free guidance: `uncond + scale * (cond - uncond)` (scale 1: the conditional)."""
  return uncond + scale * (cond - uncond)


def code_logits(logits, codebook_size: int):
  """Vision-head logits `[..., vision_vocab]` with every id but the codes 0..K-1 at -inf."""
  ids = jnp.arange(logits.shape[-1])
  return jnp.where(ids < codebook_size, logits, -jnp.inf)


def sample_codes(logits, key, temperature: float, top_k: int):
  """Codes `[batch]` int32 from code logits `[batch, vocab]`: greedy when temperature is 0 or top_k
  is 1, else sampled at `temperature` from the `top_k` most likely (0: all)."""
  if temperature <= 0 or top_k == 1:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if 0 < top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits >= kth, logits, -jnp.inf)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def next_codes(logits, key, scale, codebook_size: int, temperature: float, top_k: int):
  """Vision-head logits `[2n, vocab]` of the (cond, uncond) batch -> the n rows' next codes."""
  n = logits.shape[0] // 2
  guided = guided_logits(logits[:n], logits[n:], scale)
  return sample_codes(code_logits(guided, codebook_size), key, temperature, top_k)


# ------------------------------------------------------------------------------------ Decoding

def vision_step(model, cache: decode.KVCache, tokens, is_vision, step):
  """`lwm.model.decode.decode_step` with the token embedded by the text (`is_vision` False) or the
  vision table, returning the vision head's logits `[batch, vision_vocab]`."""
  return decode.decode_step(model, cache, tokens, step, is_vision=is_vision, head="vision")


def generate_codes(model, image_prompts, uncond_prompts, vocab, settings: Settings, *,
                   codes_per_frame: int, frames: int = 1, video_prompts=None, seed: int = 0,
                   progress: bool = False, generator=None) -> np.ndarray:
  """Codes int32 `[n, frames, codes_per_frame]` for n prompts, in LWM's two passes.

  The first frame comes from `image_prompts` guided by `uncond_prompts`; the frames after it (when
  frames > 1) from a second prefill of `video_prompts` and `uncond_prompts`, each followed by the
  first frame's codes and `<eof>`, guided with the video settings (LWM's `generate_video_pred`).
  `generator`: an `lwm.eval.inference.Generator` of `model` to reuse its jitted prefill.
  """
  from lwm.eval import inference
  n = len(image_prompts)
  if len(uncond_prompts) != n or not n:
    raise ValueError(f"need as many unconditional as conditional prompts (at least one), got "
                     f"{n} and {len(uncond_prompts)}")
  if frames < 1:
    raise ValueError(f"frames must be >= 1, got {frames}")
  if frames > 1 and (video_prompts is None or len(video_prompts) != n):
    raise ValueError(f"a video of {frames} frames needs {n} video prompts (LWM's 'Generate a "
                     "video of' sentence) for the frames after the first")
  if model.head_vision is None:
    raise ValueError("this model has no vision head (vision_vocab_size=0); it cannot generate")
  K = vocab.codebook_size
  if not K or vocab.eov >= model.config.vision_vocab_size:
    raise ValueError(f"codebook_size={K} (eof {vocab.eof}, eov {vocab.eov}) does not fit the "
                     f"model's vision head of {model.config.vision_vocab_size} ids")
  generator = generator or inference.Generator(model)
  key = jax.random.key(seed)
  bar = _progress(frames * codes_per_frame, progress)
  text = lambda prompts: [(list(p), [False] * len(p)) for p in prompts]
  first = _guided_frames(generator, text(image_prompts) + text(uncond_prompts), vocab,
                         [settings.for_frame(0)], codes_per_frame, key, bar)
  if frames == 1:
    bar.close()
    return first
  key = jax.random.fold_in(key, 1)
  rows = []
  for prompts in (video_prompts, uncond_prompts):
    for p, codes in zip(prompts, first[:, 0]):
      tail = [int(c) for c in codes] + [vocab.eof]
      rows.append((list(p) + tail, [False] * len(p) + [True] * len(tail)))
  rest = _guided_frames(generator, rows, vocab, [settings.for_frame(f) for f in range(1, frames)],
                        codes_per_frame, key, bar)
  bar.close()
  return np.concatenate([first, rest], axis=1)


def _guided_frames(generator, rows, vocab, frame_settings, codes_per_frame: int, key, bar):
  """Codes `[n, len(frame_settings), codes_per_frame]` after 2n prompts `rows` [(ids, vision
  mask)]: n conditional then n unconditional, decoded as one batch.

  The prompts but their last token are prefilled; the last is fed as the first decode step, whose
  vision logits choose the first code. `<eof>` follows every frame but the last, by rule.
  """
  from lwm import sharding as shd
  from lwm.eval import inference
  if min(len(ids) for ids, _ in rows) < 2:
    raise ValueError("every prompt needs a token before its last (<vision>'s last id is fed as "
                     "the first decode step); the unconditional prompt has none: give the "
                     "tokenizer a BOS")
  n, frames, K = len(rows) // 2, len(frame_settings), vocab.codebook_size
  lengths = [len(ids) - 1 for ids, _ in rows]
  seq = inference.padded_length(max(lengths), shd.seq_shards(generator.mesh))
  tokens = np.zeros((2 * n, seq), np.int32)
  mask = np.zeros((2 * n, seq), bool)
  for i, (ids, vision) in enumerate(rows):
    tokens[i, :lengths[i]], mask[i, :lengths[i]] = ids[:-1], vision[:-1]
  steps = frames * (codes_per_frame + 1)  # the last prompt token, each code, each <eof>
  _, cache = generator.prefill(tokens, mask, lengths, steps)
  graphdef = generator.graphdef
  step_fn = jax.jit(lambda params, cache, tokens, is_vision, step: vision_step(
      nnx.merge(graphdef, params), cache, tokens, is_vision, step), donate_argnums=(1,))
  pick = jax.jit(next_codes, static_argnums=(3, 4, 5))
  feed = lambda ids, is_vision, step: step_fn(generator.params, cache, ids, is_vision,
                                              jnp.int32(step))
  last = jnp.asarray([ids[-1] for ids, _ in rows], jnp.int32)
  logits, cache = feed(last, jnp.asarray([v[-1] for _, v in rows]), 0)
  out = np.zeros((n, frames, codes_per_frame), np.int32)
  step = 1
  for f, (scale, top_k, temperature) in enumerate(frame_settings):
    for c in range(codes_per_frame):
      key, subkey = jax.random.split(key)
      code = pick(logits, subkey, jnp.float32(scale), K, float(temperature), int(top_k))
      out[:, f, c] = np.asarray(code)
      bar.update(1)
      if f == frames - 1 and c == codes_per_frame - 1:
        break
      logits, cache = feed(jnp.concatenate([code, code]), True, step)
      step += 1
    if f < frames - 1:  # the frame is complete: its marker, placed by rule, not sampled
      logits, cache = feed(jnp.full((2 * n,), vocab.eof, jnp.int32), True, step)
      step += 1
  return out


def vision_sequence(codes, vocab) -> np.ndarray:
  """The vision ids a model reads for codes `[frames, codes_per_frame]`: each frame's codes then
  `<eof>`, the last frame's then `<eov>`."""
  codes = np.asarray(codes, np.int32)
  markers = np.full((len(codes), 1), vocab.eof, np.int32)
  markers[-1] = vocab.eov
  return np.concatenate([codes, markers], axis=1).reshape(-1)


def _progress(total: int, on: bool):
  from tqdm import tqdm
  return tqdm(total=total, unit="code", desc="generating", disable=not on)


# ------------------------------------------------------------------------------------ Frames

def decode_frames(vqgan, codes) -> np.ndarray:
  """codes `[frames, codes_per_frame]` -> uint8 frames `[frames, R, R, 3]` by the VQGAN."""
  grid = vqgan.config.grid
  codes = np.asarray(codes, np.int32)
  if codes.shape[-1] != grid * grid:
    raise ValueError(f"frames have {codes.shape[-1]} codes but the VQGAN's have {grid * grid}")
  pixels = np.asarray(jax.jit(lambda c: vqgan.decode(c))(codes.reshape(-1, grid, grid)))
  return np.clip(np.round((pixels + 1.0) * 127.5), 0, 255).astype(np.uint8)


def write_png(path: str, frame: np.ndarray) -> None:
  """An RGB uint8 `[H, W, 3]` frame as a PNG file (8-bit truecolour, no filter)."""
  h, w, _ = frame.shape
  raw = b"".join(b"\x00" + frame[y].tobytes() for y in range(h))
  chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data +
                              struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
  with open(path, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def write_mp4(path: str, frames: np.ndarray, fps: int = 4) -> None:
  """uint8 frames `[n, H, W, 3]` as an H.264 MP4 (PyAV; H and W must be even)."""
  import av
  n, h, w, _ = frames.shape
  if h % 2 or w % 2:
    raise ValueError(f"H.264 needs even frame sides, got {h}x{w}")
  with av.open(path, "w") as container:
    stream = container.add_stream("libx264", rate=fractions.Fraction(fps))
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    stream.options = {"crf": "10"}
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())
