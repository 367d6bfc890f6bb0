"""Preprocessing: a JSONL manifest of videos and text -> the tokenized `lwm_examples` dataset.

  summary = preprocess(PreprocessOptions(manifest="m.jsonl", output="out", tokenizer="tok.model",
                                         vqgan="vq/", sampling=FrameSampling(max_frames=8)), workers=4)

Manifest lines (paths relative to the manifest; lines numbered from 1):
  {"video": "clips/a.mp4", "text": "a caption", "order": "video_text" | "text_video" | "both"}
  {"text": "a long document"}
  {"prompt": "Question: ... Answer:", "text": " the answer"}   (optional with any line: the prompt
      goes right before the text and is not trained on; prompt and text are tokenized separately)

Work is split into chunks of lines; each finished chunk is one file in `output/work/`, so a rerun
after an interruption only does the missing chunks. When all are done the TFDS builder writes the
dataset, then `summary.json` and `failures.jsonl` (one line per failed manifest line: line, path,
kind, reason). Nothing is dropped silently: every line is either an example or a failure.
"""
import collections
import dataclasses
import glob
import json
import os


from lwm.data import chunks, dataset
from lwm.data import workers as workers_lib
from lwm.data.interleave import ORDERS, Vocab, interleave
from lwm.data.video import FrameSampling, VideoError, decode_video


@dataclasses.dataclass(frozen=True)
class PreprocessOptions:
  manifest: str
  output: str
  tokenizer: str
  vqgan: str | None          # None: the manifest must be text-only
  sampling: FrameSampling = FrameSampling(max_frames=8)
  chunk_size: int = 64       # manifest lines per resumable unit
  encode_batch: int = 16     # frames per jitted VQGAN call
  line_timeout_s: float = 600.0  # with workers: a line running longer fails as "timeout"


class LineError(Exception):
  """A manifest line that cannot become an example: `kind` is a short category for the summary."""

  def __init__(self, kind: str, reason: str, path: str | None = None):
    super().__init__(reason)
    self.kind, self.reason, self.path = kind, reason, path


# ---- one line -> one example ---------------------------------------------------------------------

def parse_line(raw: bytes) -> dict:
  """Validates one manifest line; returns {'text', 'prompt', 'video' (or None), 'order'}; raises
  LineError."""
  try:
    decoded = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise LineError("utf8", f"line is not valid UTF-8 ({e.reason} at byte {e.start})") from None
  if not decoded.strip():
    raise LineError("json", "blank line, expected a JSON object")
  try:
    record = json.loads(decoded)
  except json.JSONDecodeError as e:
    raise LineError("json", f"not JSON: {e.msg} at column {e.colno}") from None
  if not isinstance(record, dict):
    raise LineError("fields", f"line is a JSON {type(record).__name__}, expected an object")
  video, text, prompt = record.get("video"), record.get("text", ""), record.get("prompt", "")
  if video is None and "text" not in record:
    raise LineError("fields", f"line has neither 'text' nor 'video' (keys: {sorted(record)})")
  for name, value in (("text", text), ("prompt", prompt)):
    if not isinstance(value, str):
      raise LineError("fields", f"'{name}' must be a string, got {type(value).__name__}")
  if video is not None and not isinstance(video, str):
    raise LineError("fields", f"'video' must be a path string, got {type(video).__name__}")
  try:
    (prompt + text).encode("utf-8")
  except UnicodeEncodeError:
    raise LineError("utf8", "text is not valid UTF-8 (it holds an unpaired surrogate escape)") from None
  if video is None and not text.strip():
    raise LineError("fields", "text-only line with empty 'text'")
  order = record.get("order", "video_text")
  if order not in ORDERS:
    raise LineError("fields", f"'order' must be one of {ORDERS}, got {order!r}")
  return {"text": text, "prompt": prompt, "video": video, "order": order}


class LineProcessor:
  """Holds the tokenizers of one worker process and turns manifest lines into examples."""

  def __init__(self, options: PreprocessOptions):
    from lwm.data import text_tokenizer, vqgan
    self.options = options
    self.root = os.path.dirname(os.path.abspath(options.manifest))
    self.text = text_tokenizer.load_tokenizer(options.tokenizer)
    self.encoder = None
    codebook_size = 8192
    if options.vqgan is not None:
      self.encoder = vqgan.FrameEncoder(vqgan.load(options.vqgan), options.encode_batch)
      codebook_size = self.encoder.config.codebook_size
    self.vocab = Vocab(bos=self.text.bos_id, eos=self.text.eos_id,
                       vision_start=tuple(self.text.vision_start),
                       vision_end=tuple(self.text.vision_end), codebook_size=codebook_size)

  def __call__(self, line: int, raw: bytes) -> dict:
    record = parse_line(raw)
    codes = None
    if record["video"] is not None:
      path = os.path.join(self.root, record["video"])
      if self.encoder is None:
        raise LineError("config", "a video line needs --vqgan", record["video"])
      try:
        frames = decode_video(path, self.encoder.config.resolution, self.options.sampling)
      except VideoError as e:
        kind = "short" if "fewer than" in str(e) else "missing" if "missing" in str(e) else "video"
        raise LineError(kind, str(e), record["video"]) from None
      codes = self.encoder(frames)
    example = interleave(self.text.encode(record["text"]), codes, record["order"], self.vocab,
                         self.text.encode(record["prompt"]))
    example.update(line=line, num_frames=0 if codes is None else len(codes))
    return example


# ---- chunks and workers --------------------------------------------------------------------------

_PROCESSOR = None
FAILED_ALONE = {
    "died": ("crash", "the worker process died while processing this line (a decoder crash?)"),
    "timeout": ("timeout", "processing this line took longer than line_timeout_s={:g} s "
                           "(a decoder hang?)"),
}


def _init_worker(options: PreprocessOptions, processor=LineProcessor) -> None:
  global _PROCESSOR
  # K workers share one accelerator: none may take XLA's default 75% of its memory up front.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  _PROCESSOR = processor(options)


def _run_line(line: int, raw: bytes) -> tuple:
  """("example", dict) or ("failure", {line, path, kind, reason}) for one manifest line."""
  try:
    return "example", _PROCESSOR(line, raw)
  except LineError as e:
    return "failure", {"line": line, "path": e.path, "kind": e.kind, "reason": e.reason}


def _write_results(path: str, results: list) -> dict:
  """Writes one chunk file from line results; returns its counts for the progress bar."""
  examples = [value for kind, value in results if kind == "example"]
  failures = [value for kind, value in results if kind == "failure"]
  chunks.write_chunk(path, examples, failures)
  return {"lines": len(results), "examples": len(examples), "failures": len(failures),
          "videos": sum(e["num_frames"] > 0 for e in examples),
          "frames": sum(e["num_frames"] for e in examples),
          "tokens": sum(len(e["tokens"]) for e in examples)}


def _run_chunk(path: str, lines: list) -> dict:
  """Processes [(line, raw)] into one chunk file."""
  return _write_results(path, [_run_line(line, raw) for line, raw in lines])


def _video_of(raw: bytes):
  try:
    return json.loads(raw).get("video")
  except (ValueError, AttributeError):
    return None


def _redo_by_line(path: str, lines: list, workers: int, init_args: tuple) -> dict:
  """Reruns a chunk whose worker died or hung, one line per task; a line that still kills or
  stalls a worker when run alone becomes a failure of kind "crash" or "timeout"."""
  results = {}
  store = lambda item, result: results.__setitem__(item[0], result)
  timeout = init_args[0].line_timeout_s
  run = lambda items, n: workers_lib.run_bounded(items, _run_line, n, _init_worker, init_args,
                                                  store, lambda item: timeout)
  for item, _ in run(lines, workers):
    for _, how in run([item], 1):
      kind, reason = FAILED_ALONE[how]
      results[item[0]] = ("failure", {"line": item[0], "path": _video_of(item[1]), "kind": kind,
                                      "reason": reason.format(timeout)})
  return _write_results(path, [results[line] for line, _ in lines])


def read_manifest(path: str) -> list:
  """[(line number from 1, raw bytes)] of every line; bytes, so invalid UTF-8 is one line's failure."""
  with open(path, "rb") as f:
    return [(i + 1, raw.rstrip(b"\r\n")) for i, raw in enumerate(f)]


def _check_options(work_dir: str, options: PreprocessOptions) -> None:
  """A rerun must use the same options as the run it resumes, or chunks would disagree."""
  path = os.path.join(work_dir, "options.json")
  current = json.loads(json.dumps(dataclasses.asdict(options)))
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    if previous != current:
      raise ValueError(f"{work_dir} was started with options {previous}, now {current}; "
                       "use a new --output or the same options")
  else:
    with open(path, "w") as f:
      json.dump(current, f, indent=1)


def preprocess(options: PreprocessOptions, workers: int = 0, max_chunks: int | None = None,
               progress: bool = True, processor=LineProcessor) -> dict | None:
  """Runs (or resumes) preprocessing; returns the summary, or None if stopped by `max_chunks`.

  workers: processes to use (0 = this process). max_chunks: stop after doing this many chunks,
  leaving the rest for a rerun (used to test resuming). processor: the class that turns a line
  into an example (replaceable in tests).
  """
  from tqdm import tqdm
  work_dir = os.path.join(options.output, "work")
  os.makedirs(work_dir, exist_ok=True)
  _check_options(work_dir, options)
  lines = read_manifest(options.manifest)
  tasks = []
  for index, start in enumerate(range(0, len(lines), options.chunk_size)):
    path = chunks.chunk_path(work_dir, index)
    if not os.path.exists(path):
      tasks.append((path, lines[start:start + options.chunk_size]))
  done_lines = len(lines) - sum(len(t[1]) for t in tasks)
  stopped = max_chunks is not None and max_chunks < len(tasks)
  tasks = tasks[:max_chunks] if stopped else tasks
  totals = collections.Counter()
  bar = tqdm(total=len(lines), initial=done_lines, unit="line", disable=not progress,
             desc="preprocess")

  def account(counts):
    totals.update(counts)
    bar.update(counts["lines"])
    bar.set_postfix(videos=totals["videos"], frames=totals["frames"], tokens=totals["tokens"],
                    failures=totals["failures"])

  if workers == 0 and tasks:
    _init_worker(options, processor)
    for task in tasks:
      account(_run_chunk(*task))
  elif tasks:
    init_args = (options, processor)
    suspects = workers_lib.run_bounded(
        tasks, _run_chunk, workers, _init_worker, init_args, lambda task, counts: account(counts),
        lambda task: options.line_timeout_s * len(task[1]))
    for (path, chunk_lines), _ in suspects:  # a worker died or hung: find the line that did it
      account(_redo_by_line(path, chunk_lines, workers, init_args))
  bar.close()
  if stopped:
    return None
  summary, failures = summarize(work_dir, len(lines))
  if summary["examples"]:  # TFDS refuses an empty split; the summary says why there is none
    dataset.build(options.output, work_dir)
    _write_index_and_vocab(options)
  # Written last: summary.json present means the dataset is complete.
  with open(os.path.join(options.output, "failures.jsonl"), "w") as f:
    for failure in failures:
      f.write(json.dumps(failure) + "\n")
  with open(os.path.join(options.output, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  return summary


def _write_index_and_vocab(options: PreprocessOptions) -> None:
  """index.npz lets the loader plan batches without reading examples; vocab.json records the ids."""
  from lwm.data import loader, packing, text_tokenizer, vqgan
  loader.save_index(options.output, packing.build_index(dataset.load_examples(options.output)))
  text = text_tokenizer.load_tokenizer(options.tokenizer)
  vocab = {"text_vocab_size": text.vocab_size, "bos": text.bos_id, "eos": text.eos_id,
           "vision_start": text.vision_start, "vision_end": text.vision_end,
           "tokenizer": os.path.abspath(options.tokenizer)}
  if options.vqgan is not None:
    with open(os.path.join(options.vqgan, "config.json")) as f:
      config = json.load(f)
    size = config["codebook_size"]
    # LWM's vision vocabulary is the codebook plus 256 spare ids (8192 -> 8448).
    vocab.update(codebook_size=size, eof=size, eov=size + 1, vision_vocab_size=size + 256,
                 codes_per_frame=vqgan.VQGANConfig(**config).codes_per_frame,
                 vqgan=os.path.abspath(options.vqgan))
  with open(os.path.join(options.output, "vocab.json"), "w") as f:
    json.dump(vocab, f, indent=1)


def summarize(work_dir: str, num_lines: int) -> tuple[dict, list]:
  """(summary counts, failures sorted by line) gathered from every chunk file."""
  examples = frames = tokens = vision = loss = video_examples = 0
  failures = []
  for path in sorted(glob.glob(os.path.join(work_dir, chunks.PATTERN))):
    chunk = chunks.read_chunk(path)
    failures += chunk["failures"]
    for e in chunk["examples"]:
      examples += 1
      video_examples += e["num_frames"] > 0
      frames += e["num_frames"]
      tokens += len(e["tokens"])
      vision += int(e["vision_mask"].sum())
      loss += int(e["loss_mask"].sum())
  failures.sort(key=lambda f: f["line"])
  if examples + len(failures) != num_lines:
    raise RuntimeError(f"{examples} examples + {len(failures)} failures != {num_lines} manifest "
                       f"lines; {work_dir} holds chunks of another manifest")
  summary = {"lines": num_lines, "examples": examples, "video_examples": video_examples,
             "text_examples": examples - video_examples, "frames": frames, "tokens": tokens,
             "vision_tokens": vision, "loss_tokens": loss, "failures": len(failures),
             "failures_by_kind": dict(collections.Counter(f["kind"] for f in failures)),
             "dataset": os.path.join(dataset.NAME, dataset.VERSION) if examples else None}
  return summary, failures
