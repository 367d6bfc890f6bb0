"""A worker process that dies or hangs (as decoders do on some corrupt files) costs only its own
line: the line is reported as a "crash" or "timeout" failure and every other line still becomes an
example. Workers that cannot start at all stop the run with an error instead."""
import json
import os
import time

import pytest

from lwm.data import load_examples, text_tokenizer
from lwm.data.preprocess import LineProcessor, PreprocessOptions, preprocess


class CrashingProcessor(LineProcessor):
  """Kills its own process on lines that mention CRASH; imported by the spawned workers."""

  def __call__(self, line, raw):
    if b"CRASH" in raw:
      os._exit(3)
    return super().__call__(line, raw)


def test_a_line_that_kills_its_worker_is_a_crash_failure(tmp_path):
  lines = [{"text": f"document number {i} " * 5} for i in range(10)]
  lines[3] = {"text": "CRASH here", "video": "clips/evil.mp4"}
  manifest = tmp_path / "m.jsonl"
  manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
  tok = text_tokenizer.train_tokenizer([x["text"] for x in lines], str(tmp_path / "t.model"), 300)
  options = PreprocessOptions(manifest=str(manifest), output=str(tmp_path / "out"), tokenizer=tok,
                              vqgan=None, chunk_size=3)
  summary = preprocess(options, workers=2, progress=False, processor=CrashingProcessor)
  assert summary["examples"] == 9 and summary["failures"] == 1
  with open(tmp_path / "out" / "failures.jsonl") as f:
    failure = json.loads(f.read())
  assert (failure["line"], failure["kind"], failure["path"]) == (4, "crash", "clips/evil.mp4")
  assert sorted(e["line"] for e in load_examples(options.output)) == [1, 2, 3, 5, 6, 7, 8, 9, 10]


class HangingProcessor(LineProcessor):
  """Never returns on lines that mention HANG, like decord's get_batch deadlock."""

  def __call__(self, line, raw):
    if b"HANG" in raw:
      time.sleep(3600)
    return super().__call__(line, raw)


def test_a_line_that_hangs_its_worker_is_a_timeout_failure(tmp_path):
  lines = [{"text": f"document number {i} " * 5} for i in range(6)]
  lines[1] = {"text": "HANG here", "video": "clips/stuck.mp4"}
  manifest = tmp_path / "m.jsonl"
  manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
  tok = text_tokenizer.train_tokenizer([x["text"] for x in lines], str(tmp_path / "t.model"), 300)
  options = PreprocessOptions(manifest=str(manifest), output=str(tmp_path / "out"), tokenizer=tok,
                              vqgan=None, chunk_size=3, line_timeout_s=1.5)
  summary = preprocess(options, workers=2, progress=False, processor=HangingProcessor)
  assert summary["examples"] == 5 and summary["failures_by_kind"] == {"timeout": 1}
  with open(tmp_path / "out" / "failures.jsonl") as f:
    failure = json.loads(f.read())
  assert (failure["line"], failure["kind"], failure["path"]) == (2, "timeout", "clips/stuck.mp4")
  assert "line_timeout_s=1.5" in failure["reason"]


class BrokenProcessor(LineProcessor):
  """Fails while starting, like a worker that cannot load its tokenizer."""

  def __init__(self, options):
    raise OSError("cannot load the tokenizer")


def test_workers_that_cannot_start_stop_the_run_instead_of_failing_every_line(tmp_path):
  manifest = tmp_path / "m.jsonl"
  manifest.write_text('{"text": "a"}\n{"text": "b"}\n')
  options = PreprocessOptions(manifest=str(manifest), output=str(tmp_path / "out"),
                              tokenizer="unused.model", vqgan=None, chunk_size=1)
  with pytest.raises(RuntimeError, match="workers died while starting"):
    preprocess(options, workers=2, progress=False, processor=BrokenProcessor)
