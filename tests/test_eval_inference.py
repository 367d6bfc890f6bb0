"""Long-context inference: the sharded prefill and the cached decode agree with recomputation."""
import jax
import numpy as np
import pytest
from flax import nnx

from lwm import sharding as shd
from lwm.eval import inference
from lwm.model import Transformer, decode, get_config, layers


def tiny_model(mesh=None, seed=0, **overrides):
  """The `tiny` model with the same parameters whatever the mesh (made on the host, then placed)."""
  config = get_config("tiny", **overrides)
  _, params = nnx.split(Transformer(config, rngs=nnx.Rngs(seed)), nnx.Param)
  graphdef, abstract = nnx.split(
      nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0), mesh=mesh)), nnx.Param)
  if mesh is not None:
    params = jax.device_put(params, shd.param_shardings(abstract, mesh))
  return nnx.merge(graphdef, params)


def prompt(n, seed=0, vocab=256):
  return np.random.default_rng(seed).integers(3, vocab, n).astype(np.int32)


def recomputed_greedy(model, tokens, steps):
  """Greedy decoding the slow way: the whole sequence through the model at every step."""
  seq = np.zeros((1, len(tokens) + steps), np.int32)  # causal: later slots do not change earlier
  seq[0, :len(tokens)] = tokens                         # logits, so one shape serves every step
  forward = jax.jit(model.__call__)
  for i in range(len(tokens), len(tokens) + steps):
    seq[0, i] = int(np.argmax(forward(seq)[0, i - 1]))
  return list(seq[0, len(tokens):])


@pytest.mark.parametrize("mesh_sizes", [(1, 1, 1, 8), (1, 2, 2, 2), (1, 1, 1, 2, 4)])
def test_sharded_prefill_gives_the_logits_of_one_device(mesh_sizes):
  tokens = [prompt(45, seed=1), prompt(60, seed=2)]  # uneven lengths: padding differs per row
  logits = {}
  for name, mesh in (("one", None), ("mesh", shd.make_mesh(*mesh_sizes))):
    gen = inference.Generator(tiny_model(mesh))
    seq = inference.padded_length(60, gen.mesh.shape["sp"])
    padded = np.zeros((2, seq), np.int32)
    for i, t in enumerate(tokens):
      padded[i, :len(t)] = t
    logits[name], _ = gen.prefill(padded, np.zeros_like(padded, bool), [45, 60], 4)
  np.testing.assert_allclose(np.asarray(logits["mesh"]), np.asarray(logits["one"]),
                             rtol=1e-5, atol=1e-5)
  # And both equal the training forward's logits at each row's last token.
  model = tiny_model()
  for i, t in enumerate(tokens):
    full = np.asarray(model(t[None]))[0, -1]
    np.testing.assert_allclose(np.asarray(logits["one"])[i], full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mesh_sizes", [None, (1, 1, 1, 8), (1, 1, 2, 2, 2)])
def test_cached_decoding_gives_the_tokens_of_recomputation(mesh_sizes):
  mesh = None if mesh_sizes is None else shd.make_mesh(*mesh_sizes)
  # A larger init scale keeps the random model's argmax away from near-ties.
  tokens = prompt(37, seed=3)
  reference = recomputed_greedy(tiny_model(initializer_range=0.2), tokens, 12)
  [cached] = inference.Generator(tiny_model(mesh, initializer_range=0.2))([tokens],
                                                                          max_new_tokens=12)
  assert len(set(reference)) > 3  # not a degenerate repetition
  assert cached == reference


def test_generation_stops_at_the_first_of_several_eos_ids():
  gen = inference.Generator(tiny_model(initializer_range=0.2))
  prompts = [prompt(37, seed=3), prompt(20, seed=6)]
  free = gen(prompts, max_new_tokens=12)  # the reference: no EOS
  assert min(map(len, free)) == 12
  # EOS ids drawn from the free runs (Llama 3.1 stops on any of three): each row stops before the
  # first of them, and an EOS the model never gives stops nothing.
  eos = (free[0][8], free[1][4], 10 ** 6)
  first = lambda row: min([row.index(e) for e in eos if e in row] + [len(row)])
  stopped = gen(prompts, max_new_tokens=12, eos_ids=eos)
  assert stopped == [row[:first(row)] for row in free]
  assert len(stopped[1]) <= 4 and gen(prompts, max_new_tokens=12, eos_ids=10 ** 6) == free


@pytest.mark.parametrize("mesh_sizes", [None, (1, 2, 2, 2)])
def test_cached_decode_logits_match_the_full_forward(mesh_sizes):
  """Prefill + decode steps (the decoder layer's "prefill" and "decode" modes) give the logits of
  the training forward ("train" mode, one device) over the whole sequence."""
  model = tiny_model()
  tokens = prompt(21, seed=4)
  mesh = None if mesh_sizes is None else shd.make_mesh(*mesh_sizes)
  gen = inference.Generator(tiny_model(mesh))
  seq = inference.padded_length(21, 1 if mesh is None else mesh.shape["sp"])
  padded = np.zeros((1, seq), np.int32)
  padded[0, :21] = tokens
  logits, cache = gen.prefill(padded, np.zeros_like(padded, bool), [21], 3)
  follow = [7, 99, 5]
  for step, token in enumerate(follow):
    logits, cache = gen.decode(cache, np.asarray([token], np.int32), step)
    full = np.asarray(model(np.concatenate([tokens, follow[:step + 1]])[None]))[0, -1]
    np.testing.assert_allclose(np.asarray(logits)[0], full, rtol=1e-5, atol=1e-5)


def test_decoder_layer_refuses_an_unknown_mode():
  config = get_config("tiny")
  x = np.zeros((1, 2, config.hidden_size), np.float32)
  with pytest.raises(ValueError, match="mode='sample'"):
    layers.decoder_layer({}, x, cos=None, sin=None, config=config, mesh=None, mode="sample")
  with pytest.raises(ValueError, match="takes a DecodeCache"):
    layers.decoder_layer({}, x, cos=None, sin=None, config=config, mesh=None, mode="decode")


def test_vision_tokens_in_the_prompt_use_the_vision_embedding():
  model = tiny_model()
  tokens = prompt(30, seed=5, vocab=60)
  mask = np.zeros(30, bool)
  mask[4:20] = True
  gen = inference.Generator(model)
  seq = inference.padded_length(30, 1)
  padded, padded_mask = np.zeros((1, seq), np.int32), np.zeros((1, seq), bool)
  padded[0, :30], padded_mask[0, :30] = tokens, mask
  logits, _ = gen.prefill(padded, padded_mask, [30], 1)
  full = np.asarray(model(tokens[None], mask[None]))[0, -1]
  np.testing.assert_allclose(np.asarray(logits)[0], full, rtol=1e-5, atol=1e-5)


def test_sampling_greedy_top_p_and_temperature():
  logits = jax.numpy.log(jax.numpy.asarray([[0.5, 0.3, 0.15, 0.05]]))
  key = jax.random.key(0)
  assert int(decode.sample_token(logits, key)[0]) == 0
  keys = jax.random.split(key, 200)
  draw = lambda t, p: {int(decode.sample_token(logits, k, t, p)[0]) for k in keys}
  assert draw(1.0, 0.5) == {0}            # 0.5 alone reaches top_p = 0.5
  assert draw(1.0, 0.7) == {0, 1}         # 0.5 + 0.3 reaches 0.7
  assert draw(1.0, 1.0) == {0, 1, 2, 3}


def test_padded_length_buckets():
  assert inference.padded_length(1_048_576, 8) == 1_048_576
  assert inference.padded_length(1000, 8) == 1024
  assert inference.padded_length(1025, 8) == 1280
  assert inference.padded_length(3, 4) == 8
  with pytest.raises(ValueError, match="at least one token, got length 0"):
    inference.padded_length(0, 1)


def test_lower_prefill_plans_memory_from_shapes_alone():
  config = get_config("tiny")
  mesh = shd.make_mesh(sp=8)
  figures = inference.memory_figures(inference.lower_prefill(config, mesh, 4096).compile())
  # Each device holds 1/8 of the float32 keys and values: layers x 2 x tokens x kv_heads x head_dim.
  cache = 2 * config.num_layers * 4096 * config.num_kv_heads * config.dim_per_head * 4 / 8
  assert cache / 1024 ** 3 <= figures["outputs"] < 2 * cache / 1024 ** 3
  assert figures["peak"] >= figures["outputs"]


def test_a_batch_of_prompts_generates_what_each_prompt_does_alone():
  gen = inference.Generator(tiny_model(shd.make_mesh(1, 2, 2, 2), initializer_range=0.2))
  prompts = [prompt(36, seed=6), prompt(40, seed=7), prompt(33, seed=8)]  # one bucket: 40
  together = gen(prompts, max_new_tokens=6)
  alone = [gen([p], max_new_tokens=6)[0] for p in prompts]
  assert together == alone and len({tuple(t) for t in together}) == 3


def test_bfloat16_inference_stays_close_to_float32():
  tokens = prompt(50, seed=9)
  out = {}
  for dtype in ("float32", "bfloat16"):
    gen = inference.Generator(tiny_model(shd.make_mesh(sp=8), dtype=dtype))
    padded = np.zeros((1, 64), np.int32)
    padded[0, :50] = tokens
    logits, cache = gen.prefill(padded, np.zeros_like(padded, bool), [50], 2)
    assert cache.prompt_k.dtype == dtype
    logits, _ = gen.decode(cache, np.asarray([5], np.int32), 0)
    out[dtype] = np.asarray(logits)
  scale = np.abs(out["float32"]).max()
  np.testing.assert_allclose(out["bfloat16"], out["float32"], atol=0.05 * scale)
