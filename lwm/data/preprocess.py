"""Preprocessing on Dask: a JSONL manifest of videos and text -> the `lwm_examples` TFDS dataset.

  options = PreprocessOptions(manifest="m.jsonl", output="out", tokenizer="tok.model", vqgan="vq/",
                              sampling=FrameSampling(max_frames=8))
  with dask_cluster.connect(workers=4) as client:       # or scheduler=... / scheduler_file=...
    summary = preprocess(options, client)

Manifest lines (paths relative to the manifest; lines numbered from 1):
  {"video": "clips/a.mp4", "text": "a caption", "order": "video_text" | "text_video" | "both"}
  {"text": "a long document"}
  {"prompt": "Question: ... Answer:", "text": " the answer"}   (optional with any line: the prompt
      goes right before the text and is not trained on; prompt and text are tokenized separately)

The manifest is cut into chunks of `chunk_size` lines; each chunk is a decode task and an encode
task (`lwm.data.lines`) that write the chunk's TFDS shard and record where the cluster runs them
(so the output directory must be on a filesystem every worker sees). A rerun after an
interruption does only the chunks without a record. When all are done this process writes, from
the records alone, the TFDS dataset_info, `index.npz`, `vocab.json`, `failures.jsonl` (one line
per failed manifest line: line, path, kind, reason) and last `summary.json`. Nothing is dropped
silently: every line is either an example or a failure, whichever workers ran it and however often
a task was retried.
"""
import collections
import dataclasses
import json
import logging
import os
import uuid

import numpy as np

from lwm.data import chunks, dask_cluster, dataset, lines
from lwm.data.video import FrameSampling

log = logging.getLogger(__name__)
TASK_RETRIES = 2  # a task that raises (a flaky shared filesystem?) runs up to this many more times


@dataclasses.dataclass(frozen=True)
class PreprocessOptions:
  manifest: str
  output: str
  tokenizer: str
  vqgan: str | None          # None: the manifest must be text-only
  sampling: FrameSampling = FrameSampling(max_frames=8)
  chunk_size: int = 64       # manifest lines per task and per TFDS shard (the resumable unit)
  encode_batch: int = 16     # frames per jitted VQGAN call
  line_timeout_s: float = 600.0  # decoding one video longer than this fails its line as "timeout"
  decoder: str = "lwm.data.video:decode_video"  # module:function run in the isolated decoder


def read_manifest(path: str) -> list:
  """[(line number from 1, raw bytes)] of every line (bytes: invalid UTF-8 fails only its line)."""
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


def _progress(total: int, initial: int, enabled: bool):
  """(tqdm bar, account(counts)) showing lines, videos, frames, tokens and failures."""
  from tqdm import tqdm
  totals = collections.Counter()
  bar = tqdm(total=total, initial=initial, unit="line", disable=not enabled, desc="preprocess")

  def account(counts):
    totals.update(counts)
    bar.update(counts["lines"])
    bar.set_postfix(videos=totals["video_examples"], frames=totals["frames"],
                    tokens=totals["tokens"], failures=totals["failures"])
  return bar, account


def _run_chunks(client, options: PreprocessOptions, todo: list, num_chunks: int, run_id: str,
                encoder_resources: dict | None, account) -> None:
  """Submits [(chunk index, lines)] as decode + encode tasks, a few per worker thread at a time
  (decoded frames wait in worker memory only for those), and accounts each finished chunk."""
  from distributed import as_completed
  todo = list(todo)

  def submit():
    index, chunk_lines = todo.pop(0)
    decoded = client.submit(lines.decode_chunk, options, index, chunk_lines, run_id, pure=False,
                            key=f"lwm-decode-{run_id}-{index}", retries=TASK_RETRIES)
    return client.submit(lines.encode_chunk, options, index, num_chunks, decoded, run_id,
                         pure=False, key=f"lwm-encode-{run_id}-{index}", retries=TASK_RETRIES,
                         resources=encoder_resources)

  window = lambda: max(4, 2 * sum(client.nthreads().values()))
  running = as_completed([submit() for _ in range(min(window(), len(todo)))])
  for future in running:
    account(future.result())
    del future
    while todo and running.count() < window():
      running.add(submit())


def _count_retries(work_dir: str, run_id: str) -> int:
  """Task attempts of this run beyond the first of each task (lost workers, raised errors)."""
  folder = os.path.join(work_dir, "attempts")
  names = os.listdir(folder) if os.path.isdir(folder) else []
  names = [n for n in names if n.startswith(run_id + ".")]
  tasks = collections.Counter(n.rsplit(".", 1)[0] for n in names)
  for name in names:
    os.remove(os.path.join(folder, name))
  return sum(tasks.values()) - len(tasks)


def preprocess(options: PreprocessOptions, client=None, workers: int = 0,
               max_chunks: int | None = None, progress: bool = True,
               encoder_resources: dict | None = None) -> dict | None:
  """Runs (or resumes) preprocessing; returns the summary, or None if stopped by `max_chunks`.

  client: a distributed.Client to run on; None starts a local cluster of `workers` processes
  (0: one worker thread in this process). max_chunks: stop after this many chunks, leaving the
  rest for a rerun (to test resuming). encoder_resources: e.g. {"GPU": 1}: encode tasks run only
  on workers that declare it (`dask worker --resources GPU=1`), decode tasks anywhere.
  """
  if client is None:
    if encoder_resources:
      raise ValueError(f"encoder_resources={encoder_resources} needs a cluster whose workers "
                       "declare them (--scheduler or --scheduler-file); a local cluster's do not")
    with dask_cluster.connect(workers=workers) as local:
      return preprocess(options, local, max_chunks=max_chunks, progress=progress)
  work_dir = os.path.join(options.output, "work")
  os.makedirs(work_dir, exist_ok=True)
  _check_options(work_dir, options)
  manifest = read_manifest(options.manifest)
  starts = range(0, len(manifest), options.chunk_size)
  todo = [(i, manifest[s:s + options.chunk_size]) for i, s in enumerate(starts)
          if not os.path.exists(chunks.record_path(work_dir, i))]
  done_lines = len(manifest) - sum(len(chunk) for _, chunk in todo)
  stopped = max_chunks is not None and max_chunks < len(todo)
  todo = todo[:max_chunks] if stopped else todo
  if encoder_resources and todo and not dask_cluster.declared(client, encoder_resources):
    log.warning("no worker declares %s yet: encode tasks wait until one joins", encoder_resources)
  bar, account = _progress(len(manifest), done_lines, progress)
  run_id = uuid.uuid4().hex[:12]
  try:
    _run_chunks(client, options, todo, len(starts), run_id, encoder_resources, account)
  finally:
    bar.close()
  retries = _count_retries(work_dir, run_id)
  if stopped:
    return None
  return finish(options, len(manifest), len(starts),
                {"task_retries": retries, "chunks_run": len(todo),
                 "chunks_resumed": len(starts) - len(todo)})


def finish(options: PreprocessOptions, num_lines: int, num_chunks: int, run: dict) -> dict:
  """Writes dataset_info, index.npz, vocab.json, failures.jsonl and summary.json from the chunk
  records; returns the summary."""
  from lwm.data import loader, tfds_builder
  work_dir = os.path.join(options.output, "work")
  records = [chunks.read_record(chunks.record_path(work_dir, i)) for i in range(num_chunks)]
  summary, failures = summarize(records, num_lines)
  summary["run"] = dict(run, decode_retries=sum(r["counts"]["decode_retries"] for r in records))
  if summary["examples"]:  # TFDS refuses an empty split; the summary says why there is none
    tfds_builder.write_info(options.output, [r["counts"]["examples"] for r in records],
                            sum(r["shard_bytes"] for r in records))
    loader.save_index(options.output, {f: np.asarray([v for r in records for v in r["layout"][f]],
                                                     np.int64) for f in records[0]["layout"]})
    _write_vocab(options)
  # Written last: summary.json present means the dataset is complete.
  with open(os.path.join(options.output, "failures.jsonl"), "w") as f:
    for failure in failures:
      f.write(json.dumps(failure) + "\n")
  with open(os.path.join(options.output, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  return summary


def _write_vocab(options: PreprocessOptions) -> None:
  """vocab.json records the ids, the tokenizer and its content hash (training and evaluation
  refuse another tokenizer)."""
  from lwm import vqgan
  from lwm.data import text_tokenizer
  from lwm.vocab import Vocab
  text = text_tokenizer.load_tokenizer(options.tokenizer)
  config = vqgan.load_config(options.vqgan) if options.vqgan is not None else None
  codebook_size = config.codebook_size if config else 0
  ids = vqgan.recorded_vision_ids(options.vqgan, codebook_size) if config else {}
  vocab = Vocab.for_tokenizer(text, codebook_size, **ids).to_json()
  vocab["tokenizer"] = os.path.abspath(options.tokenizer)
  vocab["tokenizer_hash"] = text.content_hash
  if config is not None:
    vocab.update(codes_per_frame=config.codes_per_frame, vqgan=os.path.abspath(options.vqgan))
  with open(os.path.join(options.output, "vocab.json"), "w") as f:
    json.dump(vocab, f, indent=1)


def summarize(records: list[dict], num_lines: int) -> tuple[dict, list]:
  """(summary counts, failures sorted by line) gathered from the chunk records."""
  totals = collections.Counter()
  failures = []
  for record in records:
    totals.update(record["counts"])
    failures += record["failures"]
  failures.sort(key=lambda f: f["line"])
  examples = totals["examples"]
  if examples + len(failures) != num_lines:
    raise RuntimeError(f"{examples} examples + {len(failures)} failures != {num_lines} manifest "
                       "lines; the work folder holds chunks of another manifest")
  summary = {"lines": num_lines, "examples": examples, "video_examples": totals["video_examples"],
             "text_examples": examples - totals["video_examples"], "frames": totals["frames"],
             "tokens": totals["tokens"], "vision_tokens": totals["vision_tokens"],
             "loss_tokens": totals["loss_tokens"], "failures": len(failures),
             "failures_by_kind": dict(collections.Counter(f["kind"] for f in failures)),
             "dataset": os.path.join(dataset.NAME, dataset.VERSION) if examples else None}
  return summary, failures
