"""Small synthetic inputs for tests and benchmarks: videos written with PyAV, random text.

PyAV (`av`) is only needed here, to write videos; it is imported lazily.
"""
import numpy as np

# (container suffix, codec, pixel format): the common kinds decord must read.
VIDEO_KINDS = {
    "mp4": ("mp4", "libx264", "yuv420p"),
    "webm": ("webm", "libvpx-vp9", "yuv420p"),
    "avi": ("avi", "mpeg4", "yuv420p"),
}


def moving_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
  """uint8 `[n, h, w, 3]`: a smooth colour gradient with a bright square moving across it."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width]
  base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                   np.full_like(x, int(rng.integers(0, 256)))], -1).astype(np.uint8)
  frames = np.repeat(base[None], num_frames, 0)
  side = max(2, min(height, width) // 4)
  for t in range(num_frames):
    top = (t * 3) % max(height - side, 1)
    left = (t * 5) % max(width - side, 1)
    frames[t, top:top + side, left:left + side] = 255
  return frames


def write_video(path: str, frames: np.ndarray, kind: str = "mp4", fps: int = 10,
                options: dict | None = None) -> str:
  """Writes uint8 `[n, h, w, 3]` frames to `path` as `kind` (a key of VIDEO_KINDS); h, w even.
  `options` go to the encoder (e.g. {"qp": "0"} for lossless H.264)."""
  import av  # lazy: a test/benchmark dependency only
  if kind not in VIDEO_KINDS:
    raise ValueError(f"kind must be one of {sorted(VIDEO_KINDS)}, got {kind!r}")
  _, codec, pix_fmt = VIDEO_KINDS[kind]
  with av.open(path, mode="w") as container:
    stream = container.add_stream(codec, rate=fps, options=options or {})
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = pix_fmt
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return path


def random_text(rng: np.random.Generator, num_words: int) -> str:
  """Lower-case pseudo-words, for text documents of a chosen length."""
  letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
  lengths = rng.integers(2, 9, num_words)
  return " ".join("".join(rng.choice(letters, n)) for n in lengths)


# Videos of the test corpus: name -> (kind, frames, height, width, fps).
CORPUS_VIDEOS = {
    "clips/a.mp4": ("mp4", 12, 48, 64, 10),
    "clips/b.webm": ("webm", 10, 64, 40, 10),
    "clips/c.avi": ("avi", 9, 36, 36, 8),
    "clips/d.mp4": ("mp4", 30, 80, 120, 25),
    "clips/short.mp4": ("mp4", 3, 32, 32, 10),
}


def build_corpus(root: str, seed: int = 0) -> tuple[str, list[dict]]:
  """Writes a small manifest with good and broken lines under `root`.

  Returns (manifest path, expected) where expected[i] describes line i + 1: for an example
  {'ok': True, 'text', 'video' (or None), 'order', 'frames_in_file'}, for a failure
  {'ok': False, 'kind'} (the failure kind `lwm.data.preprocess` must report).
  """
  import json
  import os
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(root, "clips"), exist_ok=True)
  for name, (kind, n, h, w, fps) in CORPUS_VIDEOS.items():
    write_video(os.path.join(root, name), moving_frames(n, h, w, seed=len(name)), kind, fps)
  with open(os.path.join(root, "clips/a.mp4"), "rb") as f:
    good = f.read()
  with open(os.path.join(root, "clips/truncated.mp4"), "wb") as f:
    f.write(good[:len(good) // 3])
  open(os.path.join(root, "clips/empty.mp4"), "wb").close()
  with open(os.path.join(root, "clips/not_video.mp4"), "w") as f:
    f.write("this is not a video\n" * 20)
  lines, expected = [], []

  def ok(record, frames=None):
    lines.append(json.dumps(record).encode())
    expected.append({"ok": True, "text": record.get("text", ""), "video": record.get("video"),
                     "order": record.get("order", "video_text"), "frames_in_file": frames})

  def bad(raw, kind):
    lines.append(raw if isinstance(raw, bytes) else json.dumps(raw).encode())
    expected.append({"ok": False, "kind": kind})

  orders = ["video_text", "text_video", "both", "video_text"]
  for order, name in zip(orders, ["clips/a.mp4", "clips/b.webm", "clips/c.avi", "clips/d.mp4"]):
    ok({"video": name, "text": f"caption of {name}: {random_text(rng, 6)}", "order": order},
       CORPUS_VIDEOS[name][1])
  ok({"text": random_text(rng, 300)})
  bad({"video": "clips/short.mp4", "text": "too short"}, "short")
  bad({"video": "clips/truncated.mp4", "text": "cut"}, "video")
  bad({"video": "clips/empty.mp4", "text": "empty"}, "video")
  bad({"video": "clips/not_video.mp4", "text": "text file"}, "video")
  bad({"video": "clips/missing.mp4", "text": "gone"}, "missing")
  ok({"text": "Ünïcödé text, 中文 and emoji 🎬 " + random_text(rng, 40)})
  bad(b"this line is not json", "json")
  bad(b"", "json")
  bad([1, 2, 3], "fields")
  bad({"caption": "no text field"}, "fields")
  bad({"text": 42}, "fields")
  bad({"video": "clips/a.mp4", "text": "x", "order": "sideways"}, "fields")
  bad(b'{"text": "caf\xe9 latin-1"}', "utf8")
  bad(b'{"text": "lone \\ud800 surrogate"}', "utf8")
  ok({"video": "clips/a.mp4"}, CORPUS_VIDEOS["clips/a.mp4"][1])  # a video without text
  for _ in range(4):
    ok({"text": random_text(rng, int(rng.integers(5, 120)))})
  manifest = os.path.join(root, "manifest.jsonl")
  with open(manifest, "wb") as f:
    f.write(b"\n".join(lines) + b"\n")
  return manifest, expected


def faulty_decode_video(path: str, size: int, sampling):
  """`lwm.data.video.decode_video`, except that it crashes its process (SIGSEGV, as decord does on
  some corrupt files) on files named crash*, and never returns (decord#373) on files named hang*.
  For tests of the isolation:
  `PreprocessOptions(decoder="lwm.data.synthetic:faulty_decode_video")`."""
  import os
  import signal
  import time
  from lwm.data.video import decode_video
  name = os.path.basename(path)
  if name.startswith("crash"):
    os.kill(os.getpid(), signal.SIGSEGV)
  if name.startswith("hang"):
    time.sleep(3600)
  return decode_video(path, size, sampling)
