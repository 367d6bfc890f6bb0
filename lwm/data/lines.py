"""Manifest lines -> examples or failures, one chunk of lines per Dask task (the worker side of
`lwm.data.preprocess`).

Two tasks per chunk:
  decode_chunk  parse each line, decode its video (in the worker's isolated decoder process)
  encode_chunk  VQGAN-encode the chunk's frames in batches, tokenize text, interleave, write the
                chunk's TFDS shard, then its record (chunks.py); may be sent to accelerator workers

Every failure is an exception whose class says its kind (`LineError.kind`, `VideoError.kind`):
json, fields, utf8, config, missing, video, short, crash, timeout. Tokenizers, VQGAN and decoder
process are made once per worker process and kept (`functools.cache`).
"""
import functools
import json
import os
import threading
import uuid

import numpy as np

from lwm.data import chunks, tfds_builder
from lwm.data.interleave import ORDERS, Vocab, interleave
from lwm.data.isolated_decoder import DecoderCrashed, DecoderTimedOut, IsolatedDecoder
from lwm.data.video import VideoError

DECODE_ATTEMPTS = 2  # a decoder crash or hang is tried once more in a fresh process


class LineError(Exception):
  """A manifest line that cannot become an example; subclasses are the kinds."""
  kind = "line"


class NotJson(LineError):
  kind = "json"


class BadFields(LineError):
  kind = "fields"


class NotUtf8(LineError):
  kind = "utf8"


class NeedsVqgan(LineError):
  kind = "config"


def parse_line(raw: bytes) -> dict:
  """Validates one manifest line; returns {'text', 'prompt', 'video' (or None), 'order'}; raises
  a LineError of the failure's kind."""
  try:
    decoded = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise NotUtf8(f"line is not valid UTF-8 ({e.reason} at byte {e.start})") from None
  if not decoded.strip():
    raise NotJson("blank line, expected a JSON object")
  try:
    record = json.loads(decoded)
  except json.JSONDecodeError as e:
    raise NotJson(f"not JSON: {e.msg} at column {e.colno}") from None
  if not isinstance(record, dict):
    raise BadFields(f"line is a JSON {type(record).__name__}, expected an object")
  video, text, prompt = record.get("video"), record.get("text", ""), record.get("prompt", "")
  if video is None and "text" not in record:
    raise BadFields(f"line has neither 'text' nor 'video' (keys: {sorted(record)})")
  for name, value in (("text", text), ("prompt", prompt)):
    if not isinstance(value, str):
      raise BadFields(f"'{name}' must be a string, got {type(value).__name__}")
  if video is not None and not isinstance(video, str):
    raise BadFields(f"'video' must be a path string, got {type(video).__name__}")
  try:
    (prompt + text).encode("utf-8")
  except UnicodeEncodeError:
    raise NotUtf8("text is not valid UTF-8 (it holds an unpaired surrogate escape)") from None
  if video is None and not text.strip():
    raise BadFields("text-only line with empty 'text'")
  order = record.get("order", "video_text")
  if order not in ORDERS:
    raise BadFields(f"'order' must be one of {ORDERS}, got {order!r}")
  return {"text": text, "prompt": prompt, "video": video, "order": order}


# ---- made once per worker process ----------------------------------------------------------------

@functools.cache
def _text_tokenizer(path: str):
  from lwm.data import text_tokenizer
  return text_tokenizer.load_tokenizer(path)


@functools.cache
def frame_encoder(vqgan_dir: str, batch_size: int):
  """The VQGAN of `vqgan_dir` as a jitted batch encoder, loaded once per worker process."""
  # Several workers may share one accelerator: none may take XLA's default 75% of it up front.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  from lwm import vqgan
  return vqgan.FrameEncoder(vqgan.load(vqgan_dir), batch_size)


@functools.cache
def _decoder(spec: str, timeout_s: float, thread: int) -> IsolatedDecoder:
  del thread  # one decoder process per worker thread
  return IsolatedDecoder(spec, timeout_s)


@functools.cache
def _resolution(vqgan_dir: str) -> int:
  from lwm import vqgan  # a model directory keeps its VQGAN under assets/: resolved there
  return vqgan.load_config(vqgan_dir).resolution


def _mark_attempt(options, run_id: str, stage: str, index: int) -> None:
  """One file per task attempt, holding the worker's address; the driver counts the attempts beyond
  the first as retries."""
  folder = os.path.join(options.output, "work", "attempts")
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, f"{run_id}.{stage}.{index:08d}.{uuid.uuid4().hex}"), "w") as f:
    f.write(_worker_address())


# ---- the two tasks -------------------------------------------------------------------------------

def _failure(line: int, path, error: Exception) -> dict:
  return {"line": line, "path": path, "kind": error.kind, "reason": str(error)}


def _decode(options, path: str) -> tuple[np.ndarray, int]:
  """(frames, retries) of one video, decoded in this worker's isolated decoder process."""
  decoder = _decoder(options.decoder, options.line_timeout_s, threading.get_ident())
  size = _resolution(options.vqgan)
  for attempt in range(DECODE_ATTEMPTS):
    try:
      return decoder(path, size, options.sampling), attempt
    except (DecoderCrashed, DecoderTimedOut):
      if attempt == DECODE_ATTEMPTS - 1:
        raise
  raise AssertionError("unreachable")


def decode_chunk(options, index: int, lines: list, run_id: str) -> dict:
  """[(line, raw bytes)] -> {'lines': [(line, record or None, frames or None, failure or None)],
  'decode_retries': n}."""
  _mark_attempt(options, run_id, "decode", index)
  root = os.path.dirname(os.path.abspath(options.manifest))
  results, retries = [], 0
  for line, raw in lines:
    record, path = None, None
    try:
      record = parse_line(raw)
      path = record["video"]
      frames = None
      if path is not None:
        if options.vqgan is None:
          raise NeedsVqgan("a video line needs --vqgan")
        frames, retried = _decode(options, os.path.join(root, path))
        retries += retried
      results.append((line, record, frames, None))
    except (LineError, VideoError) as e:
      retries += isinstance(e, (DecoderCrashed, DecoderTimedOut)) * (DECODE_ATTEMPTS - 1)
      results.append((line, None, None, _failure(line, path, e)))
  return {"lines": results, "decode_retries": retries}


def _vocab(options) -> Vocab:
  text = _text_tokenizer(options.tokenizer)
  codebook_size, ids = 0, {}
  if options.vqgan is not None:
    from lwm import vqgan
    codebook_size = frame_encoder(options.vqgan, options.encode_batch).config.codebook_size
    ids = vqgan.recorded_vision_ids(options.vqgan, codebook_size)  # a model directory's own ids
  return Vocab.for_tokenizer(text, codebook_size, **ids)


def _encode_frames(options, frame_lists: list) -> list:
  """VQGAN codes `[frames, codes_per_frame]` per video; all the chunk's frames in batches."""
  if not frame_lists:
    return []
  codes = frame_encoder(options.vqgan, options.encode_batch)(np.concatenate(frame_lists))
  return np.split(codes, np.cumsum([len(f) for f in frame_lists])[:-1])


def encode_chunk(options, index: int, num_chunks: int, decoded: dict, run_id: str) -> dict:
  """Finishes a chunk: examples in line order -> its TFDS shard, then its record; returns the
  record's counts (for the progress bar)."""
  from lwm.data import packing
  _mark_attempt(options, run_id, "encode", index)
  text, vocab = _text_tokenizer(options.tokenizer), _vocab(options)
  videos = [frames for _, _, frames, _ in decoded["lines"] if frames is not None]
  codes = iter(_encode_frames(options, videos))
  examples, failures = [], []
  for line, record, frames, failure in decoded["lines"]:
    if failure is not None:
      failures.append(failure)
      continue
    video_codes = next(codes) if frames is not None else None
    example = interleave(text.encode(record["text"], add_special_tokens=False), video_codes,
                         record["order"], vocab,
                         text.encode(record["prompt"], add_special_tokens=False))
    example.update(line=line, num_frames=0 if video_codes is None else len(video_codes))
    examples.append(example)
  work_dir = os.path.join(options.output, "work")
  path = tfds_builder.shard_path(options.output, index, num_chunks)
  num_bytes = tfds_builder.write_shard(path, examples, os.path.join(work_dir, "tmp"))
  layout = [packing.example_layout(e) for e in examples]
  counts = {"lines": len(decoded["lines"]), "examples": len(examples),
            "video_examples": sum(e["num_frames"] > 0 for e in examples),
            "frames": sum(e["num_frames"] for e in examples),
            "tokens": sum(len(e["tokens"]) for e in examples),
            "vision_tokens": sum(int(e["vision_mask"].sum()) for e in examples),
            "loss_tokens": sum(int(e["loss_mask"].sum()) for e in examples),
            "failures": len(failures), "decode_retries": decoded["decode_retries"]}
  counts = {k: int(v) for k, v in counts.items()}
  chunks.write_record(chunks.record_path(work_dir, index), {
      "chunk": index, "shard": os.path.basename(path), "shard_bytes": num_bytes,
      "counts": counts, "failures": failures,
      "layout": {f: [int(row[f]) for row in layout] for f in packing.INDEX_FIELDS},
      "worker": _worker_address()})
  return counts


def _worker_address() -> str:
  """The Dask worker running this task (recorded in the chunk record; not part of the data)."""
  try:
    from distributed import get_worker
    return get_worker().address
  except ValueError:
    return "local"
