"""scripts/eval_long.py end to end on a training workdir and on a Hugging Face LLaMA directory
(random tiny models): every task runs, results.json holds what it promises, a rerun resumes."""
import json
import os
import shutil
import subprocess
import sys

import pytest

import eval_testing
from lwm.eval import long_eval
from test_model_hf import HF_CONFIG, random_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL = ("niah_single,niah_multikey,niah_multivalue,niah_multiquery,vt,cwe,fwe,video_retrieve,"
       "video_order,video_count")
FIELDS = ("task", "context_length", "depth", "prompt_tokens", "expected", "answer", "score")


def eval_long(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "eval_long.py"), *args],
                        env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout


def check_results(out, tasks, length):
  cells = json.load(open(os.path.join(out, "results.json")))
  assert sorted({c["task"] for c in cells}) == sorted(tasks)
  for c in cells:
    assert all(k in c for k in FIELDS) and 0.0 <= c["score"] <= 1.0
    assert 0 < c["prompt_tokens"] <= length and c["context_length"] == length
    assert (c["depth"] is None) == (c["task"] in ("cwe", "fwe"))
  return cells


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return eval_testing.make_workdir(str(tmp_path_factory.mktemp("run")))


@pytest.mark.slow
def test_every_task_on_a_workdir_teacher_forced(workdir, tmp_path):
  out = str(tmp_path / "out")
  stdout = eval_long("--checkpoint", workdir, "--tasks", ALL, "--context-lengths", "768",
                     "--depths", "50", "--output", out, "--scoring", "teacher_forced",
                     "--choices", "4", "--mesh", "1,1,1,4")
  assert "effective length" in stdout and "average" in stdout
  cells = check_results(out, ALL.split(","), 768)
  assert len(cells) == 10 and all(c["variants"] == 4 for c in cells if "video" in c["task"])
  assert os.path.getsize(os.path.join(out, "tasks.png")) > 1000
  summary = json.load(open(os.path.join(out, "summary.json")))
  assert set(summary["tasks"]) == set(ALL.split(",")) and "768" in summary["average"]


@pytest.mark.slow
def test_generation_resumes_with_the_same_answers(workdir, tmp_path):
  out = str(tmp_path / "out")
  args = ["--checkpoint", workdir, "--tasks", "niah_multivalue,video_order", "--context-lengths",
          "640", "--depths", "0,100", "--output", out, "--mesh", "1,1,1,2"]
  eval_long(*args)
  cells = check_results(out, ["niah_multivalue", "video_order"], 640)
  assert len(cells) == 4
  json.dump(cells[1:], open(os.path.join(out, "results.json"), "w"))
  eval_long(*args)
  again = json.load(open(os.path.join(out, "results.json")))
  assert len(again) == 4 and again[:3] == cells[1:]
  assert again[-1]["answer"] == cells[0]["answer"]  # greedy: the redone sample answers the same


@pytest.mark.slow
def test_a_hugging_face_directory(tmp_path):
  hf = str(tmp_path / "llama")
  tok = eval_testing.make_tokenizer(str(tmp_path))
  random_checkpoint(hf, dict(HF_CONFIG, vocab_size=400, max_position_embeddings=2048))
  shutil.copyfile(tok, os.path.join(hf, "tokenizer.model"))
  vq = eval_testing.make_vqgan(str(tmp_path))
  out = str(tmp_path / "out")
  tasks = "niah_single,vt,video_count"
  eval_long("--checkpoint", hf, "--vqgan", vq, "--tasks", tasks, "--context-lengths", "768",
            "--depths", "25", "--output", out, "--scoring", "teacher_forced", "--mesh", "1,1,1,2")
  cells = check_results(out, tasks.split(","), 768)
  assert len(cells) == 3 and all(c["scoring"] == "teacher_forced" for c in cells)
  assert json.load(open(os.path.join(out, "run.json")))["source"] == hf
  assert long_eval.parse_tasks(tasks) == tasks.split(",")
