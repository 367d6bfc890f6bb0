"""`eval_long.py --suite ruler`: an oracle that answers right scores 100 on every task, the files
are RULER's (its evaluate.py's reading of them, re-done here, gives the same scores), the summary
is RULER's average only when all 13 tasks ran RULER-comparably and says PARTIAL and why
otherwise, a rerun resumes; end to end on a random tiny model (slow)."""
import csv
import json
import os
import re

import pytest

import eval_testing
from lwm import model_dir
from lwm.eval import ruler_build, ruler_suite
from test_eval_ruler_prompts import write_hotpotqa, write_squad

FIELDS = {"index", "pred", "input", "outputs", "others", "truncation", "length"}


class WordTokenizer:
  """Whitespace words as tokens (transformers' names): lengths in words; decode joins by spaces."""
  bos_token_id, eos_token_ids = 1, (2,)

  def __init__(self):
    self.words, self.ids = ["<pad>", "<s>", "</s>"], {}

  def encode(self, text, add_special_tokens=True):
    ids = []
    for word in text.split():
      if word not in self.ids:
        self.ids[word] = len(self.words)
        self.words.append(word)
      ids.append(self.ids[word])
    return [1] + ids if add_special_tokens else ids

  def decode(self, ids, skip_special_tokens=False):
    return " ".join(self.words[i] for i in ids if not (skip_special_tokens and i < 3))


class Oracle:
  """Records every sample built and answers it with its references (or a wrong answer)."""

  def __init__(self, monkeypatch, tokenizer, wrong=()):
    self.tokenizer, self.answers, self.wrong, self.calls = tokenizer, {}, set(wrong), 0
    build = ruler_build.RulerTask.sample

    def sample(task, index):
      s = build(task, index)
      key = tuple(tokenizer.encode(s.input + s.answer_prefix, add_special_tokens=True))
      answer = "no idea" if task.name in self.wrong else " ".join(s.outputs)
      self.answers[key] = tokenizer.encode(answer, add_special_tokens=False) + [2, 7, 7]
      return s
    monkeypatch.setattr(ruler_build.RulerTask, "sample", sample)

  def __call__(self, prompts, masks=None, *, max_new_tokens, eos_ids, seed):
    self.calls += len(prompts)
    return [self.answers[tuple(p)][:max_new_tokens] for p in prompts]


@pytest.fixture
def files(tmp_path):
  essays = tmp_path / "essays"
  essays.mkdir()
  for i in range(3):
    (essays / f"{i}.txt").write_text(f"Essay {i} begins here. Founders should talk to users. "
                                     "Most good ideas look bad at first! Why is that? " * 40)
  return dict(essays=str(essays), squad=write_squad(tmp_path / "squad.json"),
              hotpotqa=write_hotpotqa(tmp_path / "hotpot.json"))


def run(monkeypatch, out, oracle=None, wrong=(), samples=2, lengths=(2048, 4096), **kw):
  tokenizer = WordTokenizer()
  oracle = oracle or Oracle(monkeypatch, tokenizer, wrong)
  loaded = model_dir.LoadedModel(None, tokenizer, {}, None, None, "oracle")
  summary = ruler_suite.run_ruler(loaded, output=str(out), lengths=list(lengths), samples=samples,
                                  progress=False, generator=oracle, **kw)
  return summary, oracle


def rulers_evaluate(directory):
  """RULER's scripts/eval/evaluate.py's reading of a prediction folder, re-done: per task file,
  `others`' id or `index`, the prediction with control characters as newlines, the metric."""
  scores = {}
  for name in sorted(os.listdir(directory)):
    if not name.endswith(".jsonl"):
      continue
    lines = [json.loads(x) for x in open(os.path.join(directory, name))]
    total = 0.0
    for line in lines:
      line["others"].get("id", line["index"])
      pred = re.sub(r"[\x00-\x1f]", "\n", line["pred"].strip()).strip().lower()
      hits = [r.lower() in pred for r in line["outputs"]]
      total += max(hits) if name.startswith("qa") else sum(hits) / len(hits)
    scores[name[:-6]] = round(total / len(lines) * 100, 2)
  return scores


def test_everything_given_an_oracle_scores_100_and_the_average_is_rulers(monkeypatch, tmp_path,
                                                                          files):
  summary, _ = run(monkeypatch, tmp_path / "out", **files)
  assert summary["complete"] and summary["effective_length"] == 4096
  assert summary["average"] == {2048: 100.0, 4096: 100.0}
  assert set(summary["scores"]) == set(ruler_suite.TASK_NAMES)
  assert "PARTIAL" not in summary["table"] and "effective length: 4096" in summary["table"]
  root = tmp_path / "out" / "ruler"
  for n in (2048, 4096):
    for task in ruler_suite.TASK_NAMES:
      lines = [json.loads(x) for x in open(root / str(n) / f"{task}.jsonl")]
      assert [x["index"] for x in lines] == [0, 1] and all(set(x) == FIELDS for x in lines)
      assert all(x["length"] <= n and x["pred"] for x in lines)
    assert rulers_evaluate(root / str(n)) == {t: 100.0 for t in ruler_suite.TASK_NAMES}
    rows = list(csv.reader(open(root / str(n) / "summary.csv")))
    assert rows[0] == [str(i) for i in range(14)] and rows[1][1:] == list(ruler_suite.TASK_NAMES)
    assert rows[2] == ["Score"] + ["100.0"] * 13 and rows[3] == ["Nulls"] + ["0/2"] * 13
  rows = list(csv.reader(open(root / "summary.csv")))
  assert rows[0] == ["Tasks"] + list(ruler_suite.TASK_NAMES) + ["Avg"]
  assert rows[1] == ["2048"] + ["100.0"] * 14 and rows[2][0] == "4096"
  assert os.path.getsize(root / "tasks.png") > 1000 and json.load(open(root / "summary.json"))


def test_without_the_files_the_run_is_partial_and_says_why(monkeypatch, tmp_path):
  summary, _ = run(monkeypatch, tmp_path / "out", samples=1, lengths=(2048,))
  assert not summary["complete"] and summary["effective_length"] is None
  assert set(summary["not_run"]) == {"qa_1", "qa_2"} and "qa_1" not in summary["scores"]
  assert set(summary["differs"]) == set(ruler_suite.ESSAY_TASKS) and len(summary["scores"]) == 11
  table = summary["table"]
  assert "PARTIAL: not RULER's 13-task average (11 of 13 tasks at 2048" in table
  assert "qa_1: needs SQuAD v2.0 dev (--squad FILE)" in table
  assert "niah_single_2: essay haystack: lwm's synthetic filler" in table and "--essays" in table
  rows = list(csv.reader(open(tmp_path / "out" / "ruler" / "summary.csv")))
  assert rows[0][-1] == "Avg (partial)" and rows[1][-2] == ""  # qa_2 did not run


def test_scores_are_rulers_means_and_a_subset_is_partial(monkeypatch, tmp_path, files):
  summary, _ = run(monkeypatch, tmp_path / "out", wrong=("vt", "qa_1"), lengths=(2048,),
                   tasks=["vt", "qa_1", "niah_single_1"], **files)
  assert summary["scores"] == {"vt": {2048: 0.0}, "qa_1": {2048: 0.0},
                               "niah_single_1": {2048: 100.0}}
  assert summary["average"] == {2048: 33.33} and not summary["complete"]
  assert "niah_multikey_1: not asked for (--tasks)" in summary["table"]


def test_a_rerun_resumes_and_other_settings_are_refused(monkeypatch, tmp_path, files):
  out = tmp_path / "out"
  _, oracle = run(monkeypatch, out, lengths=(2048,), tasks=["niah_multiquery", "cwe"], **files)
  path = out / "ruler" / "2048" / "cwe.jsonl"
  lines = open(path).readlines()
  open(path, "w").writelines(lines[1:])
  _, again = run(monkeypatch, out, lengths=(2048,), samples=3, tasks=["niah_multiquery", "cwe"],
                 **files)
  assert again.calls == 3  # cwe's sample 0 and sample 2 of both tasks
  redone = sorted((json.loads(x) for x in open(path)), key=lambda x: x["index"])
  assert [x["index"] for x in redone] == [0, 1, 2] and redone[0] == json.loads(lines[0])
  with pytest.raises(ValueError, match="other settings .*seed=42 there, 7 now"):
    run(monkeypatch, out, lengths=(2048,), seed=7, **files)


def test_a_length_too_short_for_a_task_is_reported_not_run(monkeypatch, tmp_path, files):
  summary, _ = run(monkeypatch, tmp_path / "out", lengths=(512,), samples=1, **files)
  # vt's worked example alone is RULER's 500 tokens.
  assert summary["not_run"] == {"vt": "not run at 512: vt does not fit in 512 tokens (with 30 to "
                                      "generate), even with its smallest haystack"}
  assert not summary["complete"] and "niah_single_1" in summary["scores"]


@pytest.mark.slow  # 13 tasks x 2 lengths generated by a tiny model on the CPU: ~5 minutes
def test_suite_ruler_end_to_end_on_a_tiny_model(tmp_path, files):
  tokenizer = eval_testing.make_ruler_tokenizer(str(tmp_path))
  workdir = eval_testing.make_workdir(str(tmp_path), tokenizer=tokenizer)
  out = str(tmp_path / "out")
  common = ("--suite", "ruler", "--checkpoint", workdir, "--context-lengths", "2k,4k",
            "--samples", "1", "--mesh", "1,1,1,2")
  stdout = eval_testing.run_script("eval_long.py", *common, "--output", out, "--essays",
                                   files["essays"], "--squad", files["squad"], "--hotpotqa",
                                   files["hotpotqa"], timeout=1200)
  assert "effective length:" in stdout and "PARTIAL" not in stdout
  summary = json.load(open(os.path.join(out, "ruler", "summary.json")))
  assert summary["complete"] and set(summary["scores"]) == set(ruler_suite.TASK_NAMES)
  for n in ("2048", "4096"):
    assert len(os.listdir(os.path.join(out, "ruler", n))) == 14  # 13 tasks and summary.csv
  stdout = eval_testing.run_script("eval_long.py", *common, "--output", str(tmp_path / "bare"),
                                   "--tasks", "niah_single_1,qa_1")
  assert "PARTIAL" in stdout and "qa_1: needs SQuAD v2.0 dev" in stdout


def test_a_flag_of_the_other_suite_is_refused_by_name(capsys):
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "eval_long", os.path.join(os.path.dirname(__file__), "..", "scripts", "eval_long.py"))
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  base = ["--checkpoint", "c", "--context-lengths", "4k", "--output", "o"]
  for extra, message in ((["--suite", "ruler", "--scoring", "teacher_forced"],
                          "--scoring is not used by --suite ruler"),
                         (["--squad", "dev.json"], "--squad is not used by --suite lwm")):
    with pytest.raises(SystemExit):
      script.parse_args(base + extra)
    assert message in capsys.readouterr().err
  args = script.parse_args(base + ["--suite", "ruler", "--essays", "pg", "--chat-template", "lwm"])
  assert (args.essays, args.samples, args.seed) == ("pg", None, None)  # 500 and 42 in run_ruler
