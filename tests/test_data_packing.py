"""Packing and the loader, checked against the documents they were given.

Every token of document d at offset j is d * STRIDE + j, so a packed segment says by itself which
document and which offsets it holds; the test rebuilds the documents from `segment_ids` alone.
"""
import json

import jax
import numpy as np
import pytest

from lwm import sharding as shd
from lwm.data import packing
from lwm.data.loader import Loader
from lwm.ops import from_zigzag

STRIDE = 100_000
CODEBOOK = 64


def text_doc(doc_id, length, rng):
  tokens = (doc_id * STRIDE + np.arange(length)).astype(np.int32)
  loss = rng.random(length) < 0.8
  loss[0] = False
  return {"tokens": tokens, "vision_mask": np.zeros(length, bool), "loss_mask": loss,
          "num_frames": 0}


def video_doc(doc_id, prefix, frames, per_frame, loss_on_video=True):
  """prefix text tokens, then `frames` frames of per_frame codes + marker, then 3 text tokens; the
  loss is on the video (generation) or on the 3 closing text tokens (understanding)."""
  n = prefix + frames * (per_frame + 1) + 3
  tokens = (doc_id * STRIDE + np.arange(n)).astype(np.int32)
  vision = np.zeros(n, bool)
  vision[prefix:prefix + frames * (per_frame + 1)] = True
  loss = vision.copy()
  if not loss_on_video:
    loss[:] = False
    loss[-3:] = True
  loss[0] = False
  return {"tokens": tokens, "vision_mask": vision, "loss_mask": loss, "num_frames": frames}


def corpus(seed=0, num=40, max_len=300):
  rng = np.random.default_rng(seed)
  return [text_doc(i, int(rng.integers(2, max_len)), rng) for i in range(num)]


def segments(batch):
  """[(tokens, vision, loss-as-target-of-previous)] of every document piece, row-major order."""
  out = []
  for r in range(batch["tokens"].shape[0]):
    seg = batch["segment_ids"][r]
    for s in np.unique(seg[seg > 0]):
      idx = np.flatnonzero(seg == s)
      assert np.array_equal(idx, np.arange(idx[0], idx[-1] + 1)), "a document is not contiguous"
      out.append((r, idx, batch))
  return out


def check_row_invariants(batch):
  seg, tok = batch["segment_ids"], batch["tokens"]
  for r, idx, _ in segments(batch):
    np.testing.assert_array_equal(batch["positions"][r, idx], np.arange(len(idx)))
    np.testing.assert_array_equal(batch["targets"][r, idx[:-1]], tok[r, idx[1:]])
    np.testing.assert_array_equal(batch["target_vision_mask"][r, idx[:-1]],
                                  batch["vision_mask"][r, idx[1:]])
    assert batch["loss_mask"][r, idx[-1]] == 0, "the last token of a document has no target"
  pad = seg == 0
  assert (batch["loss_mask"][pad] == 0).all() and (batch["tokens"][pad] == 0).all()
  assert batch["loss_mask"].dtype == np.float32 and tok.dtype == np.int32


def rebuild(batches, docs):
  """{doc id: (tokens, vision, loss)} reassembled from segments; split pieces overlap by one."""
  got = {}
  for batch in batches:
    for r, idx, _ in segments(batch):
      tokens = batch["tokens"][r, idx]
      doc, offsets = tokens[0] // STRIDE, tokens % STRIDE
      assert (tokens // STRIDE == doc).all(), "a segment mixes documents"
      np.testing.assert_array_equal(offsets, offsets[0] + np.arange(len(idx)))
      # loss_mask[i] trains target i+1: map it back onto the document's own loss_mask.
      loss_of_next = batch["loss_mask"][r, idx[:-1]]
      np.testing.assert_array_equal(loss_of_next, docs[doc]["loss_mask"][offsets[1:]])
      np.testing.assert_array_equal(batch["vision_mask"][r, idx],
                                    docs[doc]["vision_mask"][offsets])
      got.setdefault(int(doc), []).append((int(offsets[0]), int(offsets[-1]) + 1))
  return got


def test_one_epoch_holds_every_document_once():
  docs = corpus()
  total = sum(len(d["tokens"]) for d in docs)
  loader = Loader(None, seq_len=512, global_batch_size=2, seed=3, examples=docs)
  batches = [next(loader) for _ in range(total // 1024 + 8)]
  for b in batches:
    check_row_invariants(b)
  # Collect only the first epoch's pieces: documents seen more than once belong to the next one.
  pieces = rebuild(batches, docs)
  for doc_id, doc in enumerate(docs):
    assert pieces[doc_id][0] == (0, len(doc["tokens"])), f"document {doc_id} was split or cut"
  assert loader.stats()["whole"] >= len(docs) and loader.stats()["split"] == 0


def test_long_text_is_split_with_one_token_overlap():
  rng = np.random.default_rng(1)
  docs = [text_doc(0, 1000, rng), text_doc(1, 50, rng), text_doc(2, 700, rng)]
  loader = Loader(None, seq_len=256, global_batch_size=1, seed=0, examples=docs)
  batches = [next(loader) for _ in range(9)]
  for b in batches:
    check_row_invariants(b)
  pieces = rebuild(batches, docs)
  for doc_id in (0, 2):
    spans = pieces[doc_id]
    first_epoch = spans[:next((i for i, s in enumerate(spans[1:], 1) if s[0] == 0), len(spans))]
    assert first_epoch[0][0] == 0 and first_epoch[-1][1] == len(docs[doc_id]["tokens"])
    for (_, stop), (start, _) in zip(first_epoch, first_epoch[1:]):
      assert start == stop - 1, "consecutive pieces must overlap by exactly one token"
  assert loader.stats()["split"] >= 2


def test_long_video_is_cut_at_a_frame_boundary_or_skipped():
  per_frame = 15
  docs = [video_doc(0, prefix=5, frames=10, per_frame=per_frame),             # 168 tokens
          video_doc(1, prefix=5, frames=10, per_frame=per_frame, loss_on_video=False),
          video_doc(2, prefix=70, frames=2, per_frame=per_frame),             # no frame fits
          video_doc(3, prefix=4, frames=2, per_frame=per_frame)]              # fits whole
  index = packing.build_index(docs)
  usable, status = packing.usable_lengths(index, seq_len=64)
  assert list(status) == [packing.CUT, packing.SKIPPED, packing.SKIPPED, packing.WHOLE]
  assert usable[0] == 5 + 3 * (per_frame + 1)  # three whole frames after the 5-token prefix
  loader = Loader(None, seq_len=64, global_batch_size=2, seed=0, examples=docs)
  batches = [next(loader) for _ in range(2)]
  pieces = rebuild(batches, docs)
  assert set(pieces) == {0, 3} and pieces[0][0] == (0, int(usable[0]))
  stats = loader.stats()
  assert stats["cut"] >= 1 and stats["skipped"] >= 2 and 0 < stats["efficiency"] <= 1


def test_same_seed_same_batches_and_resume():
  docs = corpus(num=60)
  a = Loader(None, seq_len=256, global_batch_size=2, seed=7, examples=docs)
  first = [next(a) for _ in range(3)]
  state = json.loads(json.dumps(a.get_state()))  # it must survive a round trip through JSON
  rest = [next(a) for _ in range(30)]              # crosses into the next epochs
  b = Loader(None, seq_len=256, global_batch_size=2, seed=7, examples=docs)
  b.set_state(state)
  for x, y in zip(rest, [next(b) for _ in range(30)]):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  c = Loader(None, seq_len=256, global_batch_size=2, seed=8, examples=docs)
  assert not np.array_equal(next(c)["tokens"], first[0]["tokens"])
  assert a.get_state()["epoch"] >= 1


def test_state_from_another_stage_is_refused():
  docs = corpus(num=5)
  state = Loader(None, seq_len=256, global_batch_size=2, examples=docs).get_state()
  with pytest.raises(ValueError, match="seq_len=256"):
    Loader(None, seq_len=512, global_batch_size=2, examples=docs).set_state(state)


def test_global_arrays_on_the_mesh_are_zigzag_and_sharded():
  mesh = shd.make_mesh(1, 2, 1, 4)
  docs = corpus(num=30)
  on_mesh = Loader(None, seq_len=256, global_batch_size=4, seed=1, mesh=mesh, examples=docs)
  plain = Loader(None, seq_len=256, global_batch_size=4, seed=1, examples=docs)
  for _ in range(2):
    batch, reference = next(on_mesh), next(plain)
    for key, value in batch.items():
      assert isinstance(value, jax.Array) and value.shape == (4, 256)
      assert value.sharding.spec == jax.sharding.PartitionSpec("fsdp", "sp")  # dp=1 is left out
      np.testing.assert_array_equal(np.asarray(from_zigzag(value, 4, axis=1)), reference[key])
  # device (fsdp=0, sp=1) holds rows 0-1 and the zigzag chunks 1 and 6 of 8.
  shard = next(s for s in batch["positions"].addressable_shards
               if s.index == (slice(0, 2), slice(64, 128)))
  positions = reference["positions"]
  expect = np.concatenate([positions[:2, 32:64], positions[:2, 192:224]], 1)
  np.testing.assert_array_equal(np.asarray(shard.data), expect)


def test_bad_mesh_sizes_name_the_numbers():
  mesh = shd.make_mesh(1, 2, 1, 4)
  with pytest.raises(ValueError, match=r"seq_len 100 must be divisible by 2 \* sp \* hp = 8"):
    Loader(None, seq_len=100, global_batch_size=2, mesh=mesh, examples=corpus(num=3))
  with pytest.raises(ValueError, match=r"seq_len 72 must be divisible by 2 \* sp \* hp = 16"):
    Loader(None, seq_len=72, global_batch_size=2, mesh=shd.make_mesh(hp=2, sp=4),
           examples=corpus(num=3))


def test_a_batch_that_fsdp_does_not_divide_is_replicated_over_it():
  """3 rows on fsdp=2 (LWM issue 39's kind): the rows go over no axis, the tokens over sp."""
  mesh = shd.make_mesh(1, 2, 1, 4)
  docs = corpus(num=12)
  on_mesh = Loader(None, seq_len=256, global_batch_size=3, seed=1, mesh=mesh, examples=docs)
  plain = Loader(None, seq_len=256, global_batch_size=3, seed=1, examples=docs)
  batch, reference = next(on_mesh), next(plain)
  for key, value in batch.items():
    assert value.sharding.spec == jax.sharding.PartitionSpec(None, "sp")
    np.testing.assert_array_equal(np.asarray(from_zigzag(value, 4, axis=1)), reference[key])


def test_lookahead_packs_tighter_than_greedy_and_loses_nothing():
  rng = np.random.default_rng(4)
  docs = [text_doc(i, int(rng.integers(100, 400)), rng) for i in range(300)]
  efficiency = {}
  for lookahead in (0, 64):
    loader = Loader(None, seq_len=512, global_batch_size=4, seed=0, examples=docs,
                    lookahead=lookahead)
    batches = [next(loader) for _ in range(20)]
    pieces = rebuild(batches, docs)
    assert all(span == (0, len(docs[d]["tokens"])) for d, spans in pieces.items() for span in spans)
    efficiency[lookahead] = loader.stats()["efficiency"]
  assert efficiency[64] > efficiency[0] + 0.1, efficiency
