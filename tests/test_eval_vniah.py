"""V-NIAH (LongVA's protocol): the grids, the needle frame at int(depth x N) among N haystack
frames, the template around video and question; on the quickstart's default needle set an oracle
that reads the needle's answer from the prompt's tokens scores 100% and an untrained model near 0;
LongVA's output files; needle files read as LongVA's JSONL."""
import json
import os

import numpy as np
import pytest

import eval_testing
from lwm.demo import corpus
from lwm import model_dir
from lwm.eval import chat_format, vniah


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("vniah"))
  tokenizer, encoder, vocab = eval_testing.video_parts(root)
  return root, tokenizer, encoder, vocab


def test_longvas_grids():
  assert vniah.frame_counts(200, 3000, 200) == list(range(200, 3001, 200))  # LongVA's eval.sh
  assert vniah.frame_counts(20, 300, 20)[-1] == 300
  assert vniah.depth_grid(0.2) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
  assert vniah.depth_grid(0.1) == [round(0.1 * i, 6) for i in range(11)]
  assert [vniah.needle_index(d, 30) for d in vniah.depth_grid(0.2)] == [0, 6, 12, 18, 24, 30]
  with pytest.raises(ValueError, match="--min-frames <= --max-frames"):
    vniah.frame_counts(30, 20, 5)


@pytest.mark.parametrize("depth", [0.0, 0.4, 1.0])
def test_the_needle_frame_sits_at_its_depth_between_template_halves(parts, depth):
  _, tokenizer, encoder, vocab = parts
  per_frame = encoder.config.codes_per_frame
  hay = np.arange(10 * per_frame).reshape(10, per_frame) % encoder.config.codebook_size
  needle = np.full((1, per_frame), 7)
  lwm = chat_format.prompt_formatter("lwm")
  tokens, mask, at = vniah.vniah_prompt(tokenizer, vocab, hay, needle, depth, "Which number?",
                                        lwm)
  assert at == int(depth * 10)
  frames = tokens[mask].reshape(11, per_frame + 1)  # N + 1 frames, each closed by <eof>/<eov>
  np.testing.assert_array_equal(frames[at, :-1], needle[0])
  np.testing.assert_array_equal(np.delete(frames, at, 0)[:, :-1], hay)
  assert list(frames[:-1, -1]) == [vocab.eof] * 10 and frames[-1, -1] == vocab.eov
  start, end = np.flatnonzero(mask)[[0, -1]]
  enc = lambda s: tokenizer.encode(s, add_special_tokens=False)
  head = [tokenizer.bos_token_id] + enc("You are a helpful assistant. USER: ")
  assert tokens[:start].tolist() == head + list(vocab.vision_start)
  assert tokens[end + 1:].tolist() == (list(vocab.vision_end) + enc("Which number?") +
                                       enc(" ASSISTANT: "))


class Oracle:
  """Answers a needle's question when that needle's codes are in the prompt, else nonsense."""

  def __init__(self, encoder, tokenizer, needles):
    self.known = [(encoder(vniah_frame(n, encoder)[None])[0],
                   tokenizer.encode(n["answer"], add_special_tokens=False)) for n in needles]

  def __call__(self, tokens, mask, answer):
    video = tokens[mask]
    for codes, ids in self.known:
      hits = np.flatnonzero(video == codes[0])
      if any(np.array_equal(video[h:h + len(codes)], codes) for h in hits):
        return ids
    return [0] * len(answer)


def vniah_frame(needle, encoder):
  from lwm.eval import video_needle
  return video_needle.read_image(needle["image"], encoder.config.resolution)[0]


def run(parts, out, forcer, **kw):
  root, tokenizer, encoder, _ = parts
  needles = vniah.read_needles(corpus.vniah_needles(os.path.join(root, "needles")))
  loaded = model_dir.LoadedModel(kw.pop("model", None), tokenizer, {}, None, None, "test")
  args = dict(output=str(out), haystack=corpus.vniah_haystack(12), needles=needles,
              frame_counts=vniah.frame_counts(4, 12, 4), depths=vniah.depth_grid(0.2),
              progress=False, encoder=encoder)
  forcer = forcer(encoder, tokenizer, needles) if isinstance(forcer, type) else forcer
  return vniah.run_vniah(loaded, forcer=forcer, **{**args, **kw}), needles


def test_an_oracle_scores_100_on_the_default_set_and_longvas_files(parts, tmp_path):
  summary, needles = run(parts, tmp_path / "out", Oracle)
  assert len(needles) == 5 and summary["average"] == 1.0
  assert all(n["answer"].strip().isdigit() and n["question"].startswith("Question:")
             for n in needles)
  rows = json.load(open(tmp_path / "out" / "all_accuracies.json"))
  assert [(r["Num. Frame"], r["Frame Depth"]) for r in rows] == [
      (n, d) for n in (4, 8, 12) for d in (0.0, 20.0, 40.0, 60.0, 80.0, 100.0)]
  assert all(r["Score"] == 1.0 for r in rows)
  assert open(tmp_path / "out" / "avg_accuracy.txt").read() == "Average Accuracy: 1.0\n"
  assert os.path.getsize(tmp_path / "out" / "heatmap.png") > 1000
  entries = json.load(open(tmp_path / "out" / "results.json"))
  assert len(entries) == 3 * 6 * 5 and all(e["score"] == 1.0 and e["predicted"].strip() ==
                                           e["answer"].strip() for e in entries)
  assert {e["prompt_tokens"] - e["frames"] * (parts[2].config.codes_per_frame + 1)
          for e in entries} == {entries[0]["prompt_tokens"] - 4 * 17}  # one frame more than N


def test_an_oracle_without_the_needle_scores_0_and_a_rerun_resumes(parts, tmp_path):
  blind = lambda tokens, mask, answer: [0] * len(answer)
  summary, _ = run(parts, tmp_path / "out", blind, frame_counts=[4], depths=[0.0, 1.0])
  assert summary["average"] == 0.0
  calls = []
  again, _ = run(parts, tmp_path / "out", lambda *a: calls.append(a) or [0],
                 frame_counts=[4, 8], depths=[0.0, 1.0])
  assert len(calls) == 10 and len(again["cells"]) == 4  # only the 8-frame cells were new


@pytest.mark.slow  # a random tiny model teacher-forced on 90 prompts: ~1 minute on 2 cores
def test_an_untrained_model_scores_near_0(parts, tmp_path):
  from lwm import sharding as shd
  loaded = model_dir.load_model(eval_testing.make_workdir(str(tmp_path)), shd.make_mesh(1, 1, 1, 2))
  summary, _ = run(parts, tmp_path / "out", None, model=loaded.model)
  assert summary["average"] <= 0.1


def test_needle_files_are_longvas_jsonl(tmp_path):
  (tmp_path / "n.jsonl").write_text(json.dumps({"image": "a.png", "question": "Q?",
                                                "answer": "B"}) + "\n")
  [needle] = vniah.read_needles(str(tmp_path / "n.jsonl"))
  assert needle["image"] == str(tmp_path / "a.png") and needle["answer"] == "B"
  (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "a.png", "question": "Q?"}) + "\n")
  with pytest.raises(ValueError, match="line 1 lacks answer"):
    vniah.read_needles(str(tmp_path / "bad.jsonl"))


@pytest.mark.slow  # a workdir, JAX start-up and 12 teacher-forced prompts: ~1 minute
def test_eval_needle_protocol_vniah_runs_offline_on_the_default_set(tmp_path):
  workdir = eval_testing.make_workdir(str(tmp_path))
  out = tmp_path / "out"
  stdout = eval_testing.run_script("eval_needle.py", "--protocol", "vniah", "--checkpoint",
                                   workdir, "--output", str(out), "--min-frames", "4",
                                   "--max-frames", "8", "--frame-interval", "4", "--mesh",
                                   "1,1,1,2")
  assert "V-NIAH average" in stdout and "average accuracy" in stdout
  assert len(vniah.read_needles(str(out / "default_needles" / "needles.jsonl"))) == 5
  assert len(json.load(open(out / "all_accuracies.json"))) == 2 * 6
  assert len(json.load(open(out / "results.json"))) == 2 * 6 * 5
