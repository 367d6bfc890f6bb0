"""Two JAX processes (4 CPU devices each) build one global batch: each reads only the examples of
its own rows, and together their shards equal the single-process batch in zigzag order.

The file is also the worker: `python tests/test_data_multihost.py PROCESS_ID PORT OUT`.
"""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

SEQ_LEN, BATCH, SEED, STEPS = 256, 4, 1, 2


def documents():
  rng = np.random.default_rng(0)
  docs = []
  for i in range(40):
    n = int(rng.integers(2, 300))
    loss = rng.random(n) < 0.8
    loss[0] = False
    docs.append({"tokens": (i * 1000 + np.arange(n)).astype(np.int32),
                 "vision_mask": rng.random(n) < 0.3, "loss_mask": loss, "num_frames": 0})
  return docs


class CountingSource(list):
  """A list of examples that remembers which ones were read."""

  def __init__(self, items):
    super().__init__(items)
    self.read = set()

  def __getitem__(self, index):
    self.read.add(int(index))
    return super().__getitem__(index)


def worker(process_id: int, port: int, out: str) -> None:
  from lwm import launch
  launch.set_device_count(4, replace=True)
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
  from lwm import sharding as shd
  from lwm.data.loader import Loader
  mesh = shd.make_mesh(1, 2, 1, 4)
  source = CountingSource(documents())
  loader = Loader(None, SEQ_LEN, BATCH, seed=SEED, mesh=mesh, examples=source)
  source.read.clear()  # building the index read everything; preprocess saves it as index.npz
  saved = {"local_rows": loader.local_rows}
  for step in range(STEPS):
    batch = next(loader)
    for key, value in batch.items():
      for shard in value.addressable_shards:
        rows, cols = shard.index
        saved[f"{step}/{key}/{rows.start}/{cols.start}"] = np.asarray(shard.data)
  saved["read"] = np.asarray(sorted(source.read))
  np.savez(os.path.join(out, f"process{process_id}.npz"), **saved)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.multiprocess
def test_each_process_builds_only_its_rows(tmp_path):
  from lwm.data import packing
  from lwm.data.loader import Loader
  from lwm.ops import to_zigzag
  port = free_port()
  env = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}
  procs = [subprocess.Popen([sys.executable, __file__, str(i), str(port), str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
  for p in procs:
    assert p.wait(120) == 0, p.stdout.read().decode()[-3000:]
  reference = Loader(None, SEQ_LEN, BATCH, seed=SEED, examples=documents())
  plans = []
  for step in range(STEPS):
    state = reference.state
    plan, _ = packing.plan_rows(reference.usable, reference.status, reference._order, state,
                                SEQ_LEN, BATCH, reference.lookahead)
    plans.append(plan)
    expected = {k: np.asarray(to_zigzag(v, 4, axis=1)) for k, v in next(reference).items()}
    for i in range(2):
      with np.load(tmp_path / f"process{i}.npz") as z:
        shards = [k for k in z.files if k.startswith(f"{step}/")]
        assert len(shards) == 7 * 4  # 7 fields x 4 local devices
        for name in shards:
          _, key, row, col = name.split("/")
          data = z[name]
          r, c = int(row), int(col)
          want = expected[key][r:r + data.shape[0], c:c + data.shape[1]]
          np.testing.assert_array_equal(data, want)
  for i in range(2):
    with np.load(tmp_path / f"process{i}.npz") as z:
      local_rows, read = z["local_rows"], set(z["read"].tolist())
    assert list(local_rows) == [2 * i, 2 * i + 1]
    needed = {ex for plan in plans for r in local_rows for ex, _, _ in plan[r]}
    assert read == needed, "a process read examples of rows it does not hold"


if __name__ == "__main__":
  worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
