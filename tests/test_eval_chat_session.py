"""A conversation on one cache answers as separate runs on the concatenated prompt do (greedy),
and a saved and reloaded cache continues as the live one."""
import numpy as np
import pytest

from lwm import sharding as shd
from lwm.eval import chat_session, inference

from test_eval_inference import prompt, tiny_model


def test_second_turn_equals_a_separate_run_on_the_concatenated_prompt(tmp_path):
  model = tiny_model(shd.make_mesh(sp=8), initializer_range=0.2)
  gen = inference.Generator(model)
  session = chat_session.ChatSession(gen, capacity=128, prefill_chunk=8, eos_ids=())
  first, second = prompt(30, seed=1), prompt(9, seed=2)
  a1 = session.ask_ids(first, max_new_tokens=6)
  [ref1] = gen([first], max_new_tokens=6)
  assert a1 == ref1
  session.save(str(tmp_path / "c.npz"), "fp")
  a2 = session.ask_ids(second, max_new_tokens=6)
  [ref2] = gen([np.concatenate([first, a1, second])], max_new_tokens=6)
  assert a2 == ref2 and len(set(a2)) > 2
  # Reloaded: the same second answer.
  again = chat_session.ChatSession(gen, capacity=128, prefill_chunk=8)
  again.load(str(tmp_path / "c.npz"), "fp")
  assert again.ask_ids(second, max_new_tokens=6) == a2
  with pytest.raises(ValueError, match="another model or tokenizer"):
    again.load(str(tmp_path / "c.npz"), "other")


def test_a_turn_that_would_overflow_the_cache_is_refused():
  session = chat_session.ChatSession(inference.Generator(tiny_model()), capacity=32)
  with pytest.raises(ValueError, match="needs 30 prompt tokens \\+ up to 8 new ones"):
    session.ask_ids(prompt(30), max_new_tokens=8)


@pytest.mark.slow
def test_ask_answers_several_questions_and_continues_a_saved_cache(tmp_path):
  import os
  import subprocess
  import sys
  import eval_testing
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdir = eval_testing.make_workdir(str(tmp_path))
  (tmp_path / "doc.txt").write_text("The old farmer waits. The special magic Paris number is: 12.")
  run = lambda *a, stdin="": subprocess.run(
      [sys.executable, os.path.join(root, "scripts", "ask.py"), "--checkpoint", workdir,
       "--max-new-tokens", "4", "--prefill-chunk", "8", *a], input=stdin, capture_output=True,
      text=True, timeout=300, cwd=root, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  cache = str(tmp_path / "c.npz")
  done = run("--text-file", str(tmp_path / "doc.txt"), "--question", "What number?",
             "--question", "Which city?", "--save-cache", cache)
  assert done.returncode == 0, done.stderr[-2000:]
  assert len(done.stdout.splitlines()) == 2 and os.path.isfile(cache)
  done = run("--load-cache", cache, "--interactive", stdin="Who waits?\n\n")
  assert done.returncode == 0 and len(done.stdout.splitlines()) == 1, done.stderr[-2000:]
  done = run("--load-cache", cache, "--max-cache", "2", "--question", "Who waits?")
  assert done.returncode != 0 and "larger --max-cache" in done.stderr
