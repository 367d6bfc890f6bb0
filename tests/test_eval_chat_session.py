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
