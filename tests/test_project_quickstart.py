"""The quickstart command end to end at its smallest settings (`--small`, about a minute): every
artefact exists and is readable. Run with `pytest -m slow tests/test_project_quickstart.py`."""
import json
import os
import re
import subprocess
import sys

import pytest

from lwm.demo import corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("text_needle_accuracy", "video_needle_accuracy", "control_text_needle_accuracy",
        "control_video_needle_accuracy", "niah_multivalue_accuracy", "video_order_accuracy",
        "control_niah_multivalue_accuracy", "control_video_order_accuracy",
        "generation_accuracy", "control_generation_accuracy", "stage2_context_length", "seconds")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("quickstart"))
  command = [sys.executable, os.path.join(ROOT, "scripts", "quickstart.py"), "--small", "--output",
             out]
  subprocess.run(command, cwd=ROOT, check=True)
  return out, command


@pytest.mark.slow
def test_summary_has_every_key_with_a_number(quickstart):
  out, _ = quickstart
  with open(os.path.join(out, "summary.json")) as f:
    summary = json.load(f)
  for key in KEYS:
    assert isinstance(summary[key], (int, float)), (key, summary.get(key))
  for key in KEYS[:10]:
    assert 0.0 <= summary[key] <= 1.0, (key, summary[key])
  for key in KEYS[:8]:
    assert sorted(summary[key + "_by_length"]) == ["384", "512"]  # the heatmaps' columns


@pytest.mark.slow
def test_heatmaps_and_generated_strips_are_pngs_next_to_the_summary(quickstart):
  out, _ = quickstart
  for prefix in ("", "control_"):
    for name in ("text_needle", "video_needle", "niah_multivalue", "video_order"):
      with open(os.path.join(out, f"{prefix}{name}_heatmap.png"), "rb") as f:
        assert f.read(8) == PNG
    with open(os.path.join(out, f"{prefix}generation_strip.png"), "rb") as f:
      assert f.read(8) == PNG


@pytest.mark.slow
def test_results_cells_score_held_out_values(quickstart):
  out, _ = quickstart
  for run in ("stage2_text", "stage2_video", "control_text", "control_video"):
    with open(os.path.join(out, "eval", run, "results.json")) as f:
      cells = json.load(f)
    assert cells, run
    for cell in cells:  # corpus.is_held_out is independent of the pool files the pipeline wrote
      assert 0.0 <= cell["score"] <= 1.0 and corpus.is_held_out(cell["expected"]), (run, cell)
  for run in ("stage2_niah_multivalue", "control_video_order"):
    with open(os.path.join(out, "eval", run, "results.json")) as f:
      cells = json.load(f)
    assert {c["context_length"] for c in cells} == {384, 512}, run
    for cell in cells:  # the long tasks ask for held-out values too
      shown = cell["info"].get("values") or cell["info"]["shown"]
      assert shown and all(corpus.is_held_out(v) for v in shown), (run, cell["info"])
  for stage in ("short", "long"):  # no answer to a question holds a held-out value
    with open(os.path.join(out, "corpus", f"{stage}.jsonl")) as f:
      answers = [json.loads(line)["text"] for line in f if '"prompt"' in line]
    values = [v for a in answers for v in re.findall(r"\d+", a)]  # multivalue answers hold four
    assert values and not any(corpus.is_held_out(v) for v in values), stage
  for model in ("generate", "control"):  # generation is asked for held-out numbers only
    with open(os.path.join(out, "eval", f"{model}_generation", "results.json")) as f:
      samples = json.load(f)["samples"]
    assert samples and all(corpus.is_held_out(s["asked"]) for s in samples), model
  with open(os.path.join(out, "corpus_generate", "generate.jsonl")) as f:  # and taught on others
    taught = [v for line in f for v in re.findall(r"\d+", json.loads(line)["text"])]
  assert taught and not any(corpus.is_held_out(v) for v in taught)
  with open(os.path.join(out, "corpus", "short.jsonl")) as f:  # reading is taught on every value
    captions = [json.loads(line)["text"] for line in f if "numbers shown" in line]
  assert any(corpus.is_held_out(v) for c in captions for v in re.findall(r"\d+", c))


@pytest.mark.slow
def test_a_rerun_reuses_every_step(quickstart):
  out, command = quickstart
  result = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
  assert "skipped" in result.stdout and "train.py" not in result.stdout.split("summary")[0]
