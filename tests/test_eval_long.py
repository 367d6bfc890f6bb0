"""The long-context run: an oracle that answers right scores 1 on every task under both scorings
(and 0 on a multiple-choice question when one rotation is wrong); teacher forcing reads back the
model's own greedy continuation; results.json, the table, plots and the effective length."""
import json
import os

import numpy as np
import pytest

import eval_testing
from lwm import model_dir
from lwm import sharding as shd
from lwm import vqgan
from lwm.data import text_tokenizer
from lwm.eval import inference, long_eval, ruler, teacher_forced, video_tasks

TASKS = list(long_eval.TASKS)  # RULER's 13 names and ours, and the 3 video tasks


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("kit"))
  tokenizer = text_tokenizer.load_tokenizer(eval_testing.make_tokenizer(root))
  encoder = vqgan.FrameEncoder(vqgan.load(eval_testing.make_vqgan(root)))
  loaded = model_dir.LoadedModel(None, tokenizer, {}, None, None, "oracle")
  return loaded, encoder


class Oracle:
  """Records every sample the run builds and answers it: right, or wrong on the last rotation."""

  def __init__(self, monkeypatch, tokenizer, wrong_last_rotation=False):
    self.tokenizer, self.answers, self.wrong = tokenizer, {}, wrong_last_rotation
    for module, name in ((ruler, "make_text_sample"), (video_tasks, "make_video_sample")):
      monkeypatch.setattr(module, name, self.recording(getattr(module, name)))

  def recording(self, make):
    def wrapped(*args, **kwargs):
      sample = make(*args, **kwargs)
      for i, v in enumerate(sample.variants):
        answer = v.answer
        if self.wrong and v.letter and i == len(sample.variants) - 1:
          answer = " " + ("A" if v.letter != "A" else "B")
        self.answers[v.tokens.tobytes()] = self.tokenizer.encode(answer, add_special_tokens=False)
      return sample
    return wrapped

  def generate(self, prompts, masks=None, **kwargs):
    return [self.answers[np.asarray(p, np.int32).tobytes()] for p in prompts]

  def force(self, prompt, mask, target):
    return self.answers[np.asarray(prompt, np.int32).tobytes()]


def run(kit, oracle, out, mode, tasks=TASKS, **kw):
  loaded, encoder = kit
  args = dict(output=out, tasks=tasks, context_lengths=[768], depths=[0.0, 100.0], samples=1,
              scoring_mode=mode, progress=False, generator=oracle.generate, forcer=oracle.force,
              encoder=encoder, choices=4)
  return long_eval.run_long_eval(loaded, **{**args, **kw})


def test_right_answers_score_one_under_both_scorings(kit, monkeypatch, tmp_path):
  oracle = Oracle(monkeypatch, kit[0].tokenizer)
  generated = run(kit, oracle, str(tmp_path / "gen"), "generate")
  forced = run(kit, oracle, str(tmp_path / "tf"), "teacher_forced")
  for summary in (generated, forced):
    assert all(by == {768: 1.0} for by in summary["tasks"].values()) and len(summary["tasks"]) == 16
    assert summary["effective_length"] == 768
  cells = json.load(open(tmp_path / "gen" / "results.json"))
  again = json.load(open(tmp_path / "tf" / "results.json"))
  key = lambda c: (c["task"], c["depth"])
  assert sorted(map(key, cells)) == sorted(map(key, again))
  assert {(c["task"], c["depth"]) for c in cells if c["depth"] is None} == {("cwe", None),
                                                                           ("fwe", None)}
  for c in cells:
    assert 0 < c["prompt_tokens"] <= 768 and c["score"] == 1.0 and c["expected"]
    if c["task"].startswith("video"):
      assert c["variants"] == 4 and c["rotations_right"] == 4


def test_a_chat_template_wraps_every_prompt_and_moves_the_positions(kit, monkeypatch, tmp_path):
  from lwm.data import chat
  tokenizer = kit[0].tokenizer
  oracle = Oracle(monkeypatch, tokenizer)
  head, tail = chat.wrap_ids(tokenizer, "lwm")  # BOS "You are a helpful assistant. USER:" ...
  prefix, seen = list(tokenizer.prefix_ids), []

  def generate(prompts, masks=None, **kwargs):  # the oracle, asked with the unwrapped prompt
    p = list(prompts[0])
    seen.append(p)
    assert p[:len(head)] == head and p[len(p) - len(tail):] == tail
    return oracle.generate([prefix + p[len(head):len(p) - len(tail)]])

  tasks = ["niah_single", "video_retrieve"]
  wrapped = run(kit, oracle, str(tmp_path / "lwm"), "generate", tasks=tasks, generator=generate,
                chat_template="lwm")
  plain = run(kit, oracle, str(tmp_path / "none"), "generate", tasks=tasks)
  assert all(by == {768: 1.0} for s in (wrapped, plain) for by in s["tasks"].values())
  assert len(seen) == 2 * (1 + 4)  # two depths; video: four rotations
  shift = len(head) - len(prefix)
  infos = [json.load(open(tmp_path / d / "results.json")) for d in ("lwm", "none")]
  for w, p in zip(*infos):
    assert w["info"]["needle_positions"] == [x + shift for x in p["info"]["needle_positions"]]
    assert w["prompt_tokens"] == p["prompt_tokens"] + len(head) + len(tail) - len(prefix)


def test_one_wrong_rotation_fails_the_question(kit, monkeypatch, tmp_path):
  oracle = Oracle(monkeypatch, kit[0].tokenizer, wrong_last_rotation=True)
  summary = run(kit, oracle, str(tmp_path / "out"), "generate",
                tasks=["video_retrieve", "video_count", "niah_single"])
  assert summary["tasks"]["video_retrieve"] == {768: 0.0}
  assert summary["tasks"]["video_count"] == {768: 0.0}
  assert summary["tasks"]["niah_single"] == {768: 1.0}
  cells = json.load(open(tmp_path / "out" / "results.json"))
  assert {c["rotations_right"] for c in cells if c["task"].startswith("video")} == {3}
  assert summary["effective_length"] is None  # average 1/3


def test_outputs_and_resume(kit, monkeypatch, tmp_path):
  oracle = Oracle(monkeypatch, kit[0].tokenizer)
  out = str(tmp_path / "out")
  run(kit, oracle, out, "generate", tasks=["niah_single", "cwe"])
  for name in ("summary.json", "tasks.png", "heatmap_niah_single.png", "run.json"):
    assert os.path.getsize(os.path.join(out, name)) > 100
  assert not os.path.exists(os.path.join(out, "heatmap_cwe.png"))  # no depth
  summary = run(kit, oracle, out, "generate", tasks=["niah_single", "cwe", "vt"])
  assert summary["skipped"] == 3 and len(json.load(open(os.path.join(out, "results.json")))) == 5
  with pytest.raises(ValueError, match="other settings"):
    run(kit, oracle, out, "teacher_forced", tasks=["niah_single"])


@pytest.mark.parametrize("choices", [-1, 1, 11])
def test_a_number_of_options_that_cannot_be_asked_is_named(choices, tmp_path):
  with pytest.raises(ValueError, match=f"choices={choices}: 0 for open questions"):
    long_eval.run_long_eval(None, output=str(tmp_path), tasks=["video_order"],
                            context_lengths=[768], choices=choices)


def test_summary_table_and_effective_length():
  cells = [{"task": t, "context_length": n, "score": s}
           for t, scores in (("a", (1.0, 0.9, 0.2)), ("b", (0.9, 0.85, 0.4)))
           for n, s in zip((1024, 2048, 4096), scores)]
  summary = long_eval.summarize(cells)
  assert summary["average"] == pytest.approx({1024: 0.95, 2048: 0.875, 4096: 0.3})
  assert summary["effective_length"] == 2048 and "effective length: 2048" in summary["table"]


@pytest.mark.slow  # a workdir and two compilations (time: docs/eval.md)
def test_teacher_forcing_reads_back_the_greedy_continuation(tmp_path):
  """Two code paths (cached decoding vs one forward over prompt + answer, on a 4-device ring)
  agree on a random model's own greedy answer: its teacher-forced score is 1."""
  loaded = model_dir.load_model(eval_testing.make_workdir(str(tmp_path)), shd.make_mesh(1, 1, 1, 4))
  rng = np.random.default_rng(0)
  prompt = rng.integers(3, len(loaded.tokenizer), 75).astype(np.int32)
  [greedy] = inference.Generator(loaded.model)([prompt], max_new_tokens=6)
  forcer = teacher_forced.TeacherForcer(loaded.model)
  assert forcer(prompt, None, greedy) == greedy
  wrong = list(greedy)
  wrong[2] = (wrong[2] + 1) % len(loaded.tokenizer)
  assert forcer(prompt, None, wrong)[:3] == greedy[:3]


def test_a_haystack_file_fills_the_essay_tasks(kit, monkeypatch, tmp_path):
  essay = "Ada Lovelace wrote the first program. Babbage built the engine. " * 40
  (tmp_path / "essay.txt").write_text(essay)
  oracle = Oracle(monkeypatch, kit[0].tokenizer)
  built = []
  monkeypatch.setattr(ruler, "make_text_sample",
                      lambda *a, make=ruler.make_text_sample, **k: built.append(make(*a, **k))
                      or built[-1])
  run(kit, oracle, str(tmp_path / "out"), "generate", tasks=["niah_single", "niah_single_1"],
      haystack=str(tmp_path / "essay.txt"), depths=[50.0])
  essay_sample, noise_sample = built
  assert "Babbage built the engine." in essay_sample.text and "grass" not in essay_sample.text
  assert "The grass is green." in noise_sample.text and "Babbage" not in noise_sample.text
