"""Video frames: decord decodes, frames are sampled uniformly or at a target fps, resized on the
short side and centre-cropped to the image tokenizer's square resolution; `manifest_frames` samples
the frames a VQGAN trains on.

decord is imported lazily so that the rest of `lwm.data` works where it has no wheel (aarch64,
macOS).
"""
import dataclasses
import json
import os
import re

import numpy as np


class VideoError(Exception):
  """A video that cannot be used (corrupt, truncated, not a video): the message is the reason
  written to failures.jsonl and `kind` its category there. Subclasses are the other kinds."""
  kind = "video"


class MissingVideo(VideoError):
  """The file does not exist."""
  kind = "missing"


class ShortVideo(VideoError):
  """The video gives fewer sampled frames than asked for."""
  kind = "short"


@dataclasses.dataclass(frozen=True)
class FrameSampling:
  """How frames are picked from a video.

  fps: frames per second of video time to keep (a stride of native_fps / fps), or None.
  max_frames: at most this many frames; without `fps`, exactly this many, spread uniformly.
  min_frames: fewer sampled frames than this is a failure ("shorter than asked"); by default
    `max_frames` when sampling uniformly, else 1.
  """
  fps: float | None = None
  max_frames: int | None = None
  min_frames: int | None = None

  def __post_init__(self):
    if self.fps is None and self.max_frames is None:
      raise ValueError("FrameSampling needs fps or max_frames (or both), got neither")
    if self.fps is not None and self.fps <= 0:
      raise ValueError(f"fps must be > 0, got {self.fps}")
    if self.max_frames is not None and self.max_frames < 1:
      raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")

  @property
  def required(self) -> int:
    if self.min_frames is not None:
      return self.min_frames
    return self.max_frames if self.fps is None else 1


def sample_indices(num_frames: int, native_fps: float, sampling: FrameSampling) -> np.ndarray:
  """Frame indices `[n]` (int64, increasing) to keep from `num_frames` frames at `native_fps`."""
  if sampling.fps is None:
    count = min(sampling.max_frames, num_frames)
    return np.round(np.linspace(0, num_frames - 1, count)).astype(np.int64)
  stride = max(native_fps / sampling.fps, 1.0)  # never repeat frames to reach a higher fps
  indices = np.unique(np.floor(np.arange(0, num_frames, stride)).astype(np.int64))
  if sampling.max_frames is not None and len(indices) > sampling.max_frames:
    keep = np.round(np.linspace(0, len(indices) - 1, sampling.max_frames)).astype(np.int64)
    indices = indices[keep]
  return indices


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
  """(height, width) with the short side equal to `size` and the aspect ratio kept."""
  scale = size / min(height, width)
  return max(size, round(height * scale)), max(size, round(width * scale))


def resize_weights(in_size: int, out_size: int, start: int, length: int) -> np.ndarray:
  """float32 `[length, in_size]`: rows `start:start+length` of a linear (triangle-filter,
  antialiased) resize from `in_size` to `out_size` pixels; each row sums to 1."""
  scale = out_size / in_size
  radius = max(1.0, 1.0 / scale)  # widen the filter when shrinking, so no input pixel is skipped
  centres = (np.arange(start, start + length) + 0.5) / scale - 0.5
  weights = np.maximum(0.0, 1.0 - np.abs(np.arange(in_size)[None] - centres[:, None]) / radius)
  return (weights / weights.sum(1, keepdims=True)).astype(np.float32)


def _taps(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """A banded `[out, in]` weight matrix as (input index `[out, k]`, weight `[out, k]`)."""
  nonzero = weights > 0
  first = nonzero.argmax(1)
  k = int(nonzero.sum(1).max())
  index = np.minimum(first[:, None] + np.arange(k), weights.shape[1] - 1)
  taps = np.take_along_axis(weights, index, 1) * (first[:, None] + np.arange(k) < weights.shape[1])
  return index, taps.astype(np.float32)


def _resize_axis(x: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
  """Applies `[out, in]` weights along `axis` of x, a few taps at a time (the matrix is banded)."""
  index, taps = _taps(weights)
  shape = [1] * x.ndim
  shape[axis] = len(index)
  out = 0.0
  for k in range(index.shape[1]):
    out = out + np.take(x, index[:, k], axis=axis) * taps[:, k].reshape(shape)  # uint8 -> float32
  return out


def resize_and_crop(frames: np.ndarray, size: int) -> np.ndarray:
  """uint8 `[n, h, w, 3]` -> uint8 `[n, size, size, 3]`: short side resized to `size`, centre crop.

  Only the cropped part is computed, a few filter taps per output pixel.
  """
  _, h, w, _ = frames.shape
  new_h, new_w = resized_shape(h, w, size)
  rows = resize_weights(h, new_h, (new_h - size) // 2, size)
  cols = resize_weights(w, new_w, (new_w - size) // 2, size)
  out = np.empty((len(frames), size, size, 3), np.uint8)
  for i, frame in enumerate(frames):  # one frame at a time stays in cache
    resized = _resize_axis(_resize_axis(frame, rows, axis=0), cols, axis=1)
    out[i] = np.clip(np.round(resized), 0, 255)
  return out


def decode_video(path: str, size: int, sampling: FrameSampling) -> np.ndarray:
  """Decodes the sampled frames of `path` as uint8 `[n, size, size, 3]`; raises VideoError (or its
  subclasses MissingVideo, ShortVideo)."""
  import decord  # lazy: see the module docstring
  if not os.path.exists(path):
    raise MissingVideo(f"missing file: {path}")
  if os.path.getsize(path) == 0:
    raise VideoError(f"empty file: {path}")
  try:
    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    num_frames, native_fps = len(reader), reader.get_avg_fps()
    if num_frames == 0:
      raise VideoError(f"no frames decoded from {path}")
    indices = sample_indices(num_frames, native_fps, sampling)
    if len(indices) < sampling.required:
      raise ShortVideo(f"video has {num_frames} frames and gives {len(indices)} sampled frames, "
                       f"fewer than the {sampling.required} asked for")
    # decord's own resize returns misaligned buffers for some sizes, so decode at native size.
    frames = reader.get_batch(list(indices)).asnumpy()
    reader.seek(0)  # releases decoder buffers (decord#208)
  except VideoError:
    raise
  except Exception as e:  # decord raises DECORDError/RuntimeError with ffmpeg's words
    lines = [re.sub(r"^\[[\d:]+\] \S+: ", "", line) for line in str(e).strip().splitlines()]
    raise VideoError(f"cannot decode {path}: {(lines or [type(e).__name__])[0][:200]}") from None
  if frames.ndim != 4 or len(frames) != len(indices) or frames.shape[-1] != 3:
    raise VideoError(f"decoder returned frames of shape {frames.shape} for {path}, "
                     f"expected [{len(indices)}, h, w, 3]")
  return resize_and_crop(frames, size)


def centre_crop_resize(frames: np.ndarray, resolution: int) -> np.ndarray:
  """uint8 frames of any size -> `[n, resolution, resolution, 3]` (short side resize, centre
  crop)."""
  if frames.shape[1:3] == (resolution, resolution):
    return frames
  return resize_and_crop(frames, resolution)


def manifest_frames(manifest: str, resolution: int, frames_per_video: int = 8,
                    held_out_fraction: float = 0.1, max_videos: int | None = None):
  """(train, held_out) uint8 frames `[n, R, R, 3]`; held-out frames come from other videos."""
  root = os.path.dirname(os.path.abspath(manifest))
  per_video = []
  with open(manifest, "rb") as f:
    for raw in f:
      try:
        video = json.loads(raw).get("video")
      except (ValueError, AttributeError):
        continue  # preprocessing reports bad lines; here they only lack frames
      if not isinstance(video, str):
        continue
      try:
        per_video.append(decode_video(os.path.join(root, video), resolution,
                                      FrameSampling(max_frames=frames_per_video, min_frames=1)))
      except VideoError:
        continue
      if max_videos is not None and len(per_video) >= max_videos:
        break
  if not per_video:
    raise ValueError(f"no decodable video in {manifest}; the VQGAN needs frames to train on")
  held = max(1, round(len(per_video) * held_out_fraction)) if len(per_video) > 1 else 0
  train_frames = np.concatenate(per_video[:len(per_video) - held])
  held_out = np.concatenate(per_video[len(per_video) - held:]) if held else train_frames[-4:]
  return train_frames, held_out
