"""A worker process that dies (as decoders do on some corrupt files) costs only its own line: the
line is reported as a "crash" failure and every other line still becomes an example."""
import json
import os
import time

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
