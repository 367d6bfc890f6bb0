"""The evaluation commands on a training workdir (a random `tiny` model): they run, write what they
promise, resume, and load the checkpoint's parameters."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

import eval_testing
from lwm import sharding as shd
from lwm.data import synthetic
from lwm import model_dir
from lwm.model import Transformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return eval_testing.make_workdir(str(tmp_path_factory.mktemp("run")))


def run(script, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), *args], env=env,
                        capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout


def test_load_model_restores_the_checkpoint_onto_a_mesh(workdir):
  loaded = model_dir.load_model(workdir, shd.make_mesh(1, 2, 1, 4))
  assert loaded.source.endswith("step 3") and len(loaded.tokenizer) == 400
  assert loaded.vqgan_dir and loaded.vocab["codes_per_frame"] == 16
  fresh = Transformer(loaded.model.config, rngs=nnx.Rngs(0))  # make_workdir saved seed 0's
  np.testing.assert_array_equal(np.asarray(loaded.model.layers.wq[...]),
                                np.asarray(fresh.layers.wq[...]))
  assert dict(loaded.model.layers.wq[...].sharding.mesh.shape) == {
      "dp": 1, "fsdp": 2, "tp": 1, "hp": 1, "sp": 4}


def test_eval_needle_text_writes_results_and_resumes(workdir, tmp_path):
  out = str(tmp_path / "out")
  args = ["--checkpoint", workdir, "--mode", "text", "--context-lengths", "128,256",
          "--depths", "0,50,100", "--output", out, "--needles", "2", "--retrieve", "1",
          "--digits", "3", "--mesh", "1,1,1,8", "--max-new-tokens", "16"]
  # (16 new tokens, not the default 128: a random model's long greedy answers end in near-ties,
  # and this test is about resuming)
  stdout = run("eval_needle.py", *args)
  assert "overall accuracy" in stdout and "depth %" in stdout
  cells = json.load(open(os.path.join(out, "results.json")))
  assert sorted((c["context_length"], c["depth"]) for c in cells) == [
      (n, d) for n in (128, 256) for d in (0.0, 50.0, 100.0)]
  assert all(c["prompt_tokens"] == c["context_length"] and len(c["keys"]) == 2 for c in cells)
  assert os.path.getsize(os.path.join(out, "heatmap.png")) > 1000
  # Greedy decoding is deterministic: a rerun of one removed cell gives the same answer.
  json.dump(cells[1:], open(os.path.join(out, "results.json"), "w"))
  run("eval_needle.py", *args)
  again = json.load(open(os.path.join(out, "results.json")))
  assert len(again) == 6 and again[-1]["answer"] == cells[0]["answer"]


def test_eval_needle_video_and_ask(workdir, tmp_path):
  out = str(tmp_path / "out")
  stdout = run("eval_needle.py", "--checkpoint", workdir, "--mode", "video", "--context-lengths",
               "200,400", "--depth-intervals", "2", "--output", out, "--mesh", "1,1,1,8",
               "--max-new-tokens", "8")
  assert "overall accuracy" in stdout
  cells = json.load(open(os.path.join(out, "results.json")))
  assert {c["depth"] for c in cells} == {0.0, 100.0} and len(cells) == 4
  assert all(len(c["expected"]) == 3 for c in cells)

  clip = synthetic.write_video(str(tmp_path / "clip.mp4"), synthetic.moving_frames(12, 48, 64))
  answer = run("ask.py", "--checkpoint", workdir, "--video", clip, "--question",
               "What number is shown in the video?", "--max-new-tokens", "4", "--mesh", "1,1,1,8")
  assert answer.endswith("\n")
  (tmp_path / "doc.txt").write_text("The old farmer waits. The special magic Paris number is: 12.")
  run("ask.py", "--checkpoint", workdir, "--text-file", str(tmp_path / "doc.txt"), "--question",
      "What is the special magic Paris number?", "--max-new-tokens", "4")
