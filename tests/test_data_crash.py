"""A video that crashes the decoder (SIGSEGV) or hangs it costs only its own line: the line is a
"crash" or "timeout" failure after one retry in a fresh decoder process, every other line is an
example, and the retries are counted. A decoder that cannot start stops the run instead."""
import dataclasses
import json
import os

import pytest

import data_testing
from lwm.data import load_examples
from lwm.data.isolated_decoder import DecoderUnavailable
from lwm.data.preprocess import PreprocessOptions, preprocess
from lwm.data.video import FrameSampling


@pytest.fixture(scope="module")
def options(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("faults"))
  manifest, expected = data_testing.fault_corpus(root)
  lines = [json.loads(line) for line in open(manifest, "rb") if b"clips/" in line]
  keep = [x for x in lines if x.get("video") in ("clips/a.mp4", "clips/crash.mp4", "clips/hang.mp4")
          and x.get("order") != "sideways"]
  small = os.path.join(root, "small.jsonl")
  with open(small, "w") as f:
    f.writelines(json.dumps(x) + "\n" for x in keep + [{"text": "a b c"}])
  tok, vq = data_testing.tokenizer_and_vqgan(root, [{"ok": True, "text": "a b c caption"}])
  return PreprocessOptions(manifest=small, output=os.path.join(root, "out"), tokenizer=tok,
                           vqgan=vq, sampling=FrameSampling(max_frames=4), chunk_size=2,
                           line_timeout_s=3.0,
                           decoder=data_testing.FAULTY_DECODER), keep


def test_decoder_crash_and_hang_fail_only_their_line(options):
  options, keep = options
  summary = preprocess(options, progress=False)
  with open(os.path.join(options.output, "failures.jsonl")) as f:
    failures = [json.loads(line) for line in f]
  assert [(f["line"], f["kind"], f["path"]) for f in failures] == [
      (keep.index({"video": "clips/crash.mp4", "text": "crashs the decoder"}) + 1, "crash",
       "clips/crash.mp4"),
      (keep.index({"video": "clips/hang.mp4", "text": "hangs the decoder"}) + 1, "timeout",
       "clips/hang.mp4")]
  assert "SIGSEGV" in failures[0]["reason"] and "line_timeout_s=3" in failures[1]["reason"]
  failed = {f["line"] for f in failures}
  assert sorted(e["line"] for e in load_examples(options.output)) == [
      line for line in range(1, len(keep) + 2) if line not in failed]
  assert summary["run"]["decode_retries"] == 2  # each fault was tried twice


def test_a_decoder_that_cannot_start_stops_the_run(options):
  options, _ = options
  broken = dataclasses.replace(options, output=options.output + "_broken",
                               decoder="lwm.data.no_such_module:decode")
  with pytest.raises(DecoderUnavailable, match="no_such_module"):
    preprocess(broken, progress=False)
