"""Weight-file readers: PyTorch's zip format without torch (and without running its pickles'
code), safetensors read lazily, strided storages."""
import os
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lwm.model import weights

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hf")
TORCH_BIN = os.path.join(FIXTURES, "llama-tied-mha", "pytorch_model.bin")


def test_torch_written_bin_is_read_with_its_names_shapes_and_dtypes():
  tensors = weights.read_pytorch_bin(TORCH_BIN)
  assert len(tensors) == 2 + 9 * 2 and "lm_head.weight" not in tensors  # Tied: no head saved.
  assert tensors["model.embed_tokens.weight"].shape == (256, 64)
  assert tensors["model.layers.1.mlp.down_proj.weight"].shape == (64, 172)
  assert all(t.dtype == np.float32 for t in tensors.values())
  with zipfile.ZipFile(TORCH_BIN) as zf:  # Storage "0" holds the embedding (per data.pkl).
    raw = np.frombuffer(zf.read("pytorch_model/data/0"), np.float32).reshape(256, 64)
  np.testing.assert_array_equal(tensors["model.embed_tokens.weight"].read(), raw)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.int64])
def test_bin_round_trip_through_our_writer(dtype, tmp_path):
  rng = np.random.default_rng(0)
  tensors = {"a": rng.standard_normal((3, 5)).astype(dtype), "b.c": np.arange(7).astype(dtype),
             "scalar": np.array(2).astype(dtype)}
  weights.write_pytorch_bin(str(tmp_path / "pytorch_model.bin"), tensors)
  read = weights.read_pytorch_bin(str(tmp_path / "pytorch_model.bin"))
  assert sorted(read) == sorted(tensors)
  for name, value in tensors.items():
    got = read[name].read()
    assert got.dtype == value.dtype and got.shape == value.shape
    np.testing.assert_array_equal(got.reshape(-1).view(np.uint8), value.reshape(-1).view(np.uint8))


class _RunsCode:
  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (os.mkdir, (self.path,))


def test_a_pickle_naming_another_global_is_refused_before_it_runs(tmp_path):
  marker = tmp_path / "was_run"
  path = tmp_path / "pytorch_model.bin"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", pickle.dumps({"w": _RunsCode(str(marker))}, protocol=2))
  with pytest.raises(pickle.UnpicklingError, match=r"posix\.mkdir"):
    weights.read_pytorch_bin(str(path))
  assert not marker.exists()
  pickle.loads(pickle.dumps(_RunsCode(str(marker))))  # The same pickle does run code unchecked.
  assert marker.exists()


def test_untyped_storage_with_rebuild_v3(tmp_path):
  """Newer torch: a `torch.UntypedStorage` (bytes) and the dtype passed to _rebuild_tensor_v3."""
  values = np.arange(6, dtype=np.float32)
  pid = (b"(X\x07\x00\x00\x00storagectorch\nUntypedStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu"
         b"J\x18\x00\x00\x00tQ")  # ('storage', UntypedStorage, '0', 'cpu', 24 bytes)
  tensor = (b"ctorch._utils\n_rebuild_tensor_v3\n(" + pid + b"J\x01\x00\x00\x00(J\x02\x00\x00\x00"
            b"J\x02\x00\x00\x00t(J\x01\x00\x00\x00J\x02\x00\x00\x00t\x89ccollections\nOrderedDict"
            b"\n)Rctorch\nfloat32\ntR")  # offset 1, size (2, 2), stride (1, 2): a transposed view
  data = b"\x80\x02}(X\x01\x00\x00\x00w" + tensor + b"u."
  with zipfile.ZipFile(tmp_path / "m.bin", "w") as zf:
    zf.writestr("m/data.pkl", data)
    zf.writestr("m/data/0", values.tobytes())
  got = weights.read_pytorch_bin(str(tmp_path / "m.bin"))["w"].read()
  np.testing.assert_array_equal(got, np.array([[1, 3], [2, 4]], np.float32))


def test_compressed_members_are_read_too(tmp_path):
  src = tmp_path / "stored.bin"
  weights.write_pytorch_bin(str(src), {"x": np.arange(10, dtype=np.float32)})
  dst = tmp_path / "deflated.bin"
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
    for info in zin.infolist():
      zout.writestr(info.filename.replace("stored/", "deflated/"), zin.read(info.filename))
  np.testing.assert_array_equal(weights.read_pytorch_bin(str(dst))["x"].read(), np.arange(10))


def test_legacy_format_is_refused_with_advice(tmp_path):
  (tmp_path / "old.bin").write_bytes(pickle.dumps(119547037146038801333356, protocol=2))
  with pytest.raises(ValueError, match="legacy"):
    weights.read_pytorch_bin(str(tmp_path / "old.bin"))


def test_safetensors_reads_lazily_and_exactly(tmp_path):
  rng = np.random.default_rng(1)
  tensors = {"a": rng.standard_normal((4, 3)).astype(np.float32),
             "b": rng.standard_normal(5).astype(np.float16)}
  save_file(tensors, str(tmp_path / "m.safetensors"))
  lazy = weights.read_safetensors(str(tmp_path / "m.safetensors"))
  assert lazy["a"].shape == (4, 3) and lazy["b"].dtype == np.float16
  for name, value in load_file(str(tmp_path / "m.safetensors")).items():
    np.testing.assert_array_equal(np.asarray(lazy[name]), value)


def test_strided_storage_view(tmp_path):
  np.arange(12, dtype=np.float32).tofile(tmp_path / "raw")
  view = weights.LazyTensor(str(tmp_path / "raw"), 4 * 2, np.float32, (3, 2), strides=(1, 4))
  np.testing.assert_array_equal(view.read(), np.array([[2, 6], [3, 7], [4, 8]], np.float32))


def test_directory_layouts(tmp_path):
  with pytest.raises(FileNotFoundError, match="pytorch_model"):
    weights.read_checkpoint(str(tmp_path))
  weights.write_pytorch_bin(str(tmp_path / "pytorch_model.bin"), {"x": np.ones(2, np.float32)})
  (tmp_path / "training_args.bin").write_bytes(struct.pack("<q", 0))  # Not weights: skipped.
  assert list(weights.read_checkpoint(str(tmp_path))) == ["x"]
  save_file({"y": np.zeros(2, np.float32)}, str(tmp_path / "model.safetensors"))
  assert list(weights.read_checkpoint(str(tmp_path))) == ["y"]  # safetensors preferred.
