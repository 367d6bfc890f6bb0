"""Chunked prefill (lwm.model.decode.extend over a ChatCache) gives the logits and the keys and
values of one-shot prefill, on one device and with the cache sharded over 8."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from lwm import ops
from lwm import sharding as shd
from lwm.eval import inference
from lwm.model import decode, get_config

from test_eval_inference import prompt, tiny_model


@pytest.mark.parametrize("mesh_sizes,chunk", [(None, 8), ((1, 1, 1, 8), 16), ((1, 1, 2, 4), 5),
                                              ((1, 1, 1, 2, 4), 16)])
def test_chunked_prefill_equals_one_shot_prefill(mesh_sizes, chunk):
  mesh = None if mesh_sizes is None else shd.make_mesh(*mesh_sizes)
  gen = inference.Generator(tiny_model(mesh))
  sp = shd.ring_shards(gen.mesh)  # the prefill's cache is in zigzag order over the ring
  lengths = [45, 30]  # uneven: row 1 ends mid-chunk and then feeds padding
  seq = inference.padded_length(45, shd.seq_shards(gen.mesh))
  tokens = np.zeros((2, seq), np.int32)
  mask = np.zeros((2, seq), bool)
  for i, n in enumerate(lengths):
    tokens[i, :n] = prompt(n, seed=i + 1, vocab=60)
  mask[0, 5:20] = True  # vision tokens in the prompt
  want_logits, want_cache = gen.prefill(tokens, mask, lengths, 4)
  cache = gen.empty_cache(2, seq + 4)
  logits, cache = gen.prefill_chunked(cache, tokens, mask, lengths, chunk)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(want_logits), rtol=1e-5, atol=1e-5)
  assert list(np.asarray(cache.lengths)) == lengths
  for got, want in ((cache.k, want_cache.prompt_k), (cache.v, want_cache.prompt_v)):
    want = np.asarray(ops.from_zigzag(np.asarray(want), sp, axis=2))
    for i, n in enumerate(lengths):
      np.testing.assert_allclose(np.asarray(got)[:, i, :n], want[:, i, :n], rtol=1e-5, atol=1e-5)


def test_decoding_one_token_chunks_gives_the_full_forward_logits():
  model = tiny_model()
  gen = inference.Generator(tiny_model(shd.make_mesh(sp=8)))
  tokens = prompt(21, seed=4)
  cache = gen.empty_cache(1, 32)
  logits, cache = gen.prefill_chunked(cache, tokens[None], np.zeros((1, 21), bool), [21], 8)
  for token in (7, 99, 5):
    logits, cache = gen.extend(cache, np.asarray([[token]]), np.zeros((1, 1), bool), [1])
    tokens = np.append(tokens, token)
    full = np.asarray(model(tokens[None]))[0, -1]
    np.testing.assert_allclose(np.asarray(logits)[0], full, rtol=1e-5, atol=1e-5)


def test_a_prompt_larger_than_the_cache_is_refused():
  gen = inference.Generator(tiny_model())
  cache = gen.empty_cache(1, 16)
  with pytest.raises(ValueError, match="needs 20 more tokens but the cache holds 0 of 16"):
    gen.prefill_chunked(cache, np.ones((1, 20), np.int32), np.zeros((1, 20), bool), [20], 8)


def test_chunk_counts():
  assert list(np.asarray(decode.chunk_counts([45, 30], 24, 8))) == [8, 6]


def test_lower_prefill_plans_a_chunk_step():
  config = get_config("tiny")
  mesh = shd.make_mesh(sp=8)
  figures = inference.memory_figures(inference.lower_prefill(config, mesh, 4096 - 64, chunk=256)
                                     .compile())
  # The step's output is the whole cache (4096 slots), each device holding 1/8 of it.
  cache = 2 * config.num_layers * 4096 * config.num_kv_heads * config.dim_per_head * 4 / 8
  assert cache / 1024 ** 3 <= figures["outputs"] < 1.1 * cache / 1024 ** 3
  assert figures["peak"] >= figures["outputs"]


def test_a_chunk_step_never_holds_the_chunks_scores_against_the_cache():
  # The memory plan of one chunk step: its temporaries stay far below one [heads, chunk, cache
  # piece] float32 score matrix (the untiled step held several).
  config = get_config("tiny")
  mesh = shd.make_mesh(sp=8)
  tokens, chunk = 1 << 20, 1024  # the cache: tokens slots, 131,072 on each device
  figures = inference.memory_figures(inference.lower_prefill(config, mesh, tokens - 64,
                                                             chunk=chunk).compile())
  scores = config.num_heads * chunk * (tokens // 8) * 4 / 1024 ** 3
  assert figures["temp"] < scores / 4, (figures, scores)


def test_plan_memory_prints_a_chunk_step_beside_the_one_shot_prefill():
  script = os.path.join(os.path.dirname(__file__), "..", "scripts", "plan_memory.py")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, script, "--mode", "prefill", "--model", "tiny", "--seq-len",
                        "512", "--mesh", "sp=8", "--prefill-chunk", "128"], capture_output=True,
                       text=True, env=env, check=True, timeout=300).stdout
  assert "(parameters, KV cache, chunk)" in out
  assert re.search(r"one-shot prefill of the same prompt, for comparison: peak \d+\.\d+ GiB", out)
  assert re.fullmatch(r"peak per device: \d+\.\d+ GiB", out.strip().splitlines()[-1])
