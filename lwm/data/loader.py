"""The packing loader: tokenized examples -> shuffled, packed global batches on the mesh.

  loader = Loader("out/", seq_len=32768, global_batch_size=8, seed=0, mesh=mesh)
  batch = next(loader)          # dict of global jax.Array [8, 32768], P(('dp','fsdp'), 'sp')
  state = loader.get_state()    # small JSON-able dict; save it with the checkpoint
  loader.set_state(state)       # a resumed run then sees exactly the same batches

Batch fields (see `packing.assemble`): tokens, vision_mask, targets, target_vision_mask, loss_mask,
segment_ids, positions. With a mesh, the sequence axis is in **zigzag order** for the mesh's `sp`
size (`lwm.ops.to_zigzag`), ready for ring attention; `lwm.ops.from_zigzag` undoes it. Without a
mesh, batches are NumPy arrays in natural order. The example order is a fresh permutation per epoch,
fixed by the seed. Each process plans the whole batch (from lengths only) but reads and builds only
the rows its devices hold.
"""
import json
import os
import queue
import threading

import numpy as np

from lwm.data import packing
from lwm.data.dataset import load_examples

INDEX_FILE = "index.npz"


def load_index(data_dir: str, examples) -> dict:
  """The packing index of a dataset: `data_dir/index.npz` (from preprocess) or one full read."""
  path = os.path.join(data_dir, INDEX_FILE)
  if os.path.isfile(path):
    with np.load(path) as z:
      index = {k: z[k] for k in packing.INDEX_FIELDS}
    if len(index["length"]) == len(examples):
      return index
  return packing.build_index(examples)


def save_index(data_dir: str, index: dict) -> None:
  tmp = os.path.join(data_dir, "index.tmp.npz")
  np.savez(tmp, **index)
  os.replace(tmp, os.path.join(data_dir, INDEX_FILE))


class Loader:
  """Iterator of packed batches; see the module docstring.

  data_dir: the preprocess output (or None with `examples`). seq_len: tokens per row.
  global_batch_size: rows per batch over all hosts. seed: fixes the per-epoch shuffles.
  mesh: a Mesh with axes dp, fsdp, sp (tp may be there too), or None for NumPy batches.
  examples: an in-memory random-access source of example dicts instead of data_dir (tests).
  lookahead: examples that may wait for a row with room (0: plain greedy packing).
  """

  def __init__(self, data_dir: str, seq_len: int, global_batch_size: int, seed: int = 0,
               mesh=None, examples=None, lookahead: int = 64):
    self.examples = load_examples(data_dir) if examples is None else examples
    if len(self.examples) == 0:
      raise ValueError(f"dataset {data_dir!r} has no examples")
    self.seq_len, self.global_batch_size, self.seed = seq_len, global_batch_size, seed
    self.lookahead = lookahead
    self.mesh = mesh
    self.index = load_index(data_dir, self.examples) if examples is None else packing.build_index(
        self.examples)
    self.usable, self.status = packing.usable_lengths(self.index, seq_len)
    self.state = packing.new_state()
    self._order_cache = (None, None)
    if mesh is not None:
      self._setup_mesh(mesh)

  def _setup_mesh(self, mesh):
    from lwm import sharding as shd
    from lwm.ops import to_zigzag
    self.num_shards = shd.ring_shards(mesh)
    if self.seq_len % shd.seq_multiple(mesh):
      raise ValueError(f"seq_len {self.seq_len} must be divisible by 2 * sp * hp = "
                       f"{shd.seq_multiple(mesh)} for the zigzag layout")
    # Rows go over the `batch` rule's axes that divide the batch (a batch of 1 on fsdp=8 is
    # replicated over fsdp, which still shards the parameters), tokens over the `seq` rule's.
    shape = (self.global_batch_size, self.seq_len)
    self.sharding = shd.named_sharding(mesh, ("batch", "seq"), shape)
    row_slices = [idx[0] for idx in self.sharding.addressable_devices_indices_map(shape).values()]
    local = set()
    for s in row_slices:
      local.update(range(*s.indices(self.global_batch_size)))
    self.local_rows = np.asarray(sorted(local))
    # The zigzag permutation, computed once with the model's own function.
    self.zigzag = np.asarray(to_zigzag(np.arange(self.seq_len)[None], self.num_shards, axis=1))[0]

  def _order(self, epoch: int) -> np.ndarray:
    if self._order_cache[0] != epoch:
      rng = np.random.default_rng([self.seed, epoch])
      self._order_cache = (epoch, rng.permutation(len(self.examples)))
    return self._order_cache[1]

  def __iter__(self):
    return self

  def next_numpy(self, rows=None) -> dict:
    """The next batch as NumPy arrays `[len(rows), seq_len]` in natural order (default all rows)."""
    plan, self.state = packing.plan_rows(self.usable, self.status, self._order, self.state,
                                         self.seq_len, self.global_batch_size, self.lookahead)
    if rows is not None:
      plan = [plan[r] for r in rows]
    return packing.assemble(plan, self.examples.__getitem__, self.seq_len)

  def __next__(self) -> dict:
    if self.mesh is None:
      return self.next_numpy()
    import jax
    local = self.next_numpy(self.local_rows)
    position = {int(r): i for i, r in enumerate(self.local_rows)}
    shape = (self.global_batch_size, self.seq_len)
    batch = {}
    for key, value in local.items():
      value = value[:, self.zigzag]

      def piece(index, value=value):
        rows = range(*index[0].indices(shape[0]))
        return value[[position[r] for r in rows], index[1]]

      batch[key] = jax.make_array_from_callback(shape, self.sharding, piece)
    return batch

  def get_state(self) -> dict:
    """JSON-able position of the iterator (with the settings it is only valid for)."""
    return json.loads(json.dumps({**self.state, "seed": self.seed, "seq_len": self.seq_len,
                                  "global_batch_size": self.global_batch_size,
                                  "lookahead": self.lookahead}))

  def set_state(self, state: dict) -> None:
    for key in ("seed", "seq_len", "global_batch_size", "lookahead"):
      if state[key] != getattr(self, key):
        raise ValueError(f"loader state was saved with {key}={state[key]}, this loader has "
                         f"{key}={getattr(self, key)}; start this stage's data from a new state")
    self.state = {k: state[k] for k in packing.new_state()}
    self.state["counts"] = dict(self.state["counts"])
    self.state["pending"] = [int(e) for e in self.state["pending"]]

  def stats(self) -> dict:
    """Packing so far: tokens, padding, efficiency (non-padding share), example counts by status."""
    total = self.state["tokens"] + self.state["padding"]
    return {"tokens": self.state["tokens"], "padding": self.state["padding"],
            "efficiency": self.state["tokens"] / total if total else 0.0, **self.state["counts"]}


class Prefetcher:
  """Packs (and places on the devices) the next `depth` batches in a background thread.

    batches = Prefetcher(loader, depth=2)
    batch = next(batches)         # the same batches, in the same order, as next(loader)
    state = batches.get_state()   # the loader's position after the last batch *returned*

  The loader must not be used directly while a Prefetcher runs: the thread owns its state. The
  checkpointed position is that of the batch consumed, so a resumed run sees the batches that were
  packed but never trained on. depth=0 packs synchronously on the caller's thread.
  """

  def __init__(self, loader, depth: int = 2):
    if depth < 0:
      raise ValueError(f"prefetch depth must be >= 0, got {depth}")
    self.loader, self.depth = loader, depth
    self._state = loader.get_state()
    self._stop = threading.Event()
    self._error = None
    if depth:
      self._queue = queue.Queue(maxsize=depth)
      self._thread = threading.Thread(target=self._fill, name="lwm-prefetch", daemon=True)
      self._thread.start()

  def _fill(self):
    try:
      while not self._stop.is_set():
        self._put((next(self.loader), self.loader.get_state(), None))
    except BaseException as error:  # handed to the consumer, raised there
      self._put((None, None, error))

  def _put(self, item):
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return
      except queue.Full:
        continue

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if not self.depth:
      batch = next(self.loader)
      self._state = self.loader.get_state()
      return batch
    if self._error is not None:  # the thread has stopped: every later call raises it too
      raise self._error
    batch, state, error = self._queue.get()
    if error is not None:
      self._error = error
      raise error
    self._state = state
    return batch

  def get_state(self) -> dict:
    return self._state

  def close(self) -> None:
    """Stops the thread (batches it packed are dropped; the state stays at the last consumed)."""
    self._stop.set()
    if self.depth:
      self._thread.join(timeout=60)
