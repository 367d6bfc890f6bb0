"""The command-line scripts end to end: a real kill (SIGKILL) midway through preprocessing, a rerun
that finishes it, and the exit status when nothing succeeds."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from lwm import vqgan
from lwm.data import load_examples, synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(name, *args, **kwargs):
  return subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", name), *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, **kwargs)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("cli"))
  manifest, expected = synthetic.build_corpus(root, seed=2)
  tok = run_script("train_tokenizer.py", "--manifest", manifest, "--output",
                   os.path.join(root, "tok.model"), "--vocab-size", "400")
  assert tok.wait(60) == 0, tok.stdout.read().decode()
  vqgan.save(os.path.join(root, "vq"), vqgan.create(vqgan.get_config("tiny"), 2))
  return root, manifest, expected


def preprocess_args(root, manifest, output, workers="1"):
  return ["--manifest", manifest, "--output", output,
          "--tokenizer", os.path.join(root, "tok.model"), "--vqgan", os.path.join(root, "vq"),
          "--max-frames", "4", "--chunk-size", "1", "--workers", workers]


def read_json(path):
  with open(path) as f:
    return json.load(f)


def records(path):
  return sorted((e["line"], e["tokens"].tolist(), e["loss_mask"].tolist())
                for e in load_examples(path))


def test_killed_preprocess_resumes_to_the_same_dataset(corpus):
  root, manifest, expected = corpus
  whole, killed = os.path.join(root, "whole"), os.path.join(root, "killed")
  assert run_script("preprocess.py", *preprocess_args(root, manifest, whole)).wait(120) == 0
  proc = run_script("preprocess.py", *preprocess_args(root, manifest, killed))
  work, deadline = os.path.join(killed, "work"), time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    done = [n for n in os.listdir(work)] if os.path.isdir(work) else []
    if sum(n.startswith("chunk-") and n.endswith(".json") for n in done) >= 4:
      break
    time.sleep(0.02)
  if proc.poll() is not None:
    pytest.skip("preprocessing finished before it could be killed")
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(killed, "summary.json"))
  assert run_script("preprocess.py", *preprocess_args(root, manifest, killed)).wait(120) == 0
  assert records(killed) == records(whole)
  failures = [os.path.join(d, "failures.jsonl") for d in (killed, whole)]
  with open(failures[0]) as a, open(failures[1]) as b:
    assert a.read() == b.read()
  summaries = [read_json(os.path.join(d, "summary.json")) for d in (killed, whole)]
  assert summaries[0].pop("run")["chunks_resumed"] >= 4
  assert summaries[1].pop("run")["chunks_resumed"] == 0
  assert summaries[0] == summaries[1] and summaries[0]["lines"] == len(expected)


def test_exit_status_is_1_when_no_line_succeeds(corpus):
  root, _, _ = corpus
  bad = os.path.join(root, "bad.jsonl")
  with open(bad, "w") as f:
    f.write('not json\n{"video": "clips/missing.mp4", "text": "x"}\n')
  args = preprocess_args(root, bad, os.path.join(root, "bad_out"), workers="0")
  proc = run_script("preprocess.py", *args)
  output = proc.communicate(timeout=120)[0].decode()
  assert proc.returncode == 1, output
  assert "no line became an example" in output
  with open(os.path.join(root, "bad_out", "failures.jsonl")) as f:
    assert [json.loads(line)["kind"] for line in f] == ["json", "missing"]


def test_train_vqgan_script_saves_a_loadable_tokenizer_and_reports_psnr(corpus):
  root, manifest, _ = corpus
  output = os.path.join(root, "vq_trained")
  proc = run_script("train_vqgan.py", "--manifest", manifest, "--output", output,
                    "--config", "tiny", "--steps", "40", "--batch-size", "8")
  text = proc.communicate(timeout=180)[0].decode()
  assert proc.returncode == 0, text
  found = re.search(r"held-out PSNR ([\d.]+) dB before training, ([\d.]+) dB after", text)
  assert found, text
  assert float(found[2]) > float(found[1]), text
  assert vqgan.load(output).config == vqgan.get_config("tiny")
