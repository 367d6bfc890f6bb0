"""Weight files of other programs, read one tensor at a time: safetensors and PyTorch's zip format.

Every reader returns name -> `LazyTensor`: shape and dtype from the file's header, the data read
from disk only by `.read()`, into a fresh array. A converter that places each tensor on its device
before reading the next never holds the checkpoint twice.

PyTorch `.bin` files are pickles, and a pickle can run any function it names. Ours admits only the
globals a saved state dict needs (tensor rebuild functions, storage and dtype names,
OrderedDict); any other global raises `pickle.UnpicklingError` naming it. torch is not needed.
"""
import collections
import json
import math
import os
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
              "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
              "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}

# torch's dtype names, as both `torch.<Name>Storage` and `torch.<dtype>` appear in its pickles.
_TORCH_DTYPES = {"float64": np.float64, "float32": np.float32, "float16": np.float16,
                 "bfloat16": ml_dtypes.bfloat16, "int64": np.int64, "int32": np.int32,
                 "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}
_STORAGES = {"DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
             "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
             "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
             "BoolStorage": "bool", "UntypedStorage": "uint8"}
_STORAGE_NAMES = {np.dtype(_TORCH_DTYPES[d]): name for name, d in _STORAGES.items()
                  if name != "UntypedStorage"}


class LazyTensor:
  """One tensor of a file: `shape`, `dtype`, and `read()` -> a new C-contiguous np.ndarray.

  The data are `dtype` elements at byte `offset` of `path` (or of zip member `member`), laid out
  with element `strides` (None: C order).
  """

  def __init__(self, path, offset, dtype, shape, strides=None, member=None):
    self.path, self.offset, self.member = path, offset, member
    self.dtype, self.shape = np.dtype(dtype), tuple(int(s) for s in shape)
    contiguous = tuple(math.prod(self.shape[i + 1:]) for i in range(len(self.shape)))
    strides = None if strides is None else tuple(int(s) for s in strides)
    self.strides = None if strides in (None, contiguous) else strides

  def __repr__(self):
    return f"LazyTensor({self.path!r}, shape={self.shape}, dtype={self.dtype})"

  def _bytes(self, start: int, count: int) -> np.ndarray:
    if self.member is None:
      return np.fromfile(self.path, np.uint8, count=count, offset=start)
    with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:  # A compressed member.
      f.seek(start)
      return np.frombuffer(f.read(count), np.uint8)

  def read(self) -> np.ndarray:
    size, item = math.prod(self.shape), self.dtype.itemsize
    if self.strides is None:
      return self._bytes(self.offset, size * item).view(self.dtype).reshape(self.shape)
    span = 1 + sum((n - 1) * s for n, s in zip(self.shape, self.strides)) if size else 0
    flat = self._bytes(self.offset, span * item).view(self.dtype)
    view = np.lib.stride_tricks.as_strided(flat, self.shape, [s * item for s in self.strides])
    return np.ascontiguousarray(view)

  def __array__(self, dtype=None, copy=None):
    return self.read() if dtype is None else self.read().astype(dtype)


# ------------------------------------------------------------------------------------ safetensors

def read_safetensors(path: str) -> dict:
  """name -> LazyTensor of a .safetensors file (its JSON header only is read now)."""
  with open(path, "rb") as f:
    (header_len,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(header_len))
  tensors = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in _ST_DTYPES:
      raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}; "
                       f"supported: {sorted(_ST_DTYPES)}")
    tensors[name] = LazyTensor(path, 8 + header_len + info["data_offsets"][0],
                               _ST_DTYPES[info["dtype"]], info["shape"])
  return tensors


def write_safetensors(path: str, tensors: dict, metadata: dict | None = None) -> None:
  """Writes name -> np.ndarray in the safetensors format (bfloat16 included)."""
  header, offset = {}, 0
  arrays = {k: np.asarray(v, order="C") for k, v in sorted(tensors.items())}
  for name, arr in arrays.items():
    header[name] = {"dtype": _ST_NAMES[arr.dtype], "shape": list(arr.shape),
                    "data_offsets": [offset, offset + arr.nbytes]}
    offset += arr.nbytes
  if metadata:
    header["__metadata__"] = metadata
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)  # The format aligns the data section to 8 bytes.
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for arr in arrays.values():
      f.write(arr.tobytes())


# ------------------------------------------------------------------------------------ PyTorch .bin

def _rebuild_tensor(storage, storage_offset, size, stride, *_, dtype=None):
  """torch._utils._rebuild_tensor_v2 / _v3: a view of `storage` (a (LazyTensor, numel) pair)."""
  base, _numel = storage
  dtype = np.dtype(dtype if dtype is not None else base.dtype)
  return LazyTensor(base.path, base.offset + storage_offset * dtype.itemsize, dtype, size, stride,
                    base.member)


_REBUILDERS = {
    "_rebuild_tensor_v2": _rebuild_tensor,
    "_rebuild_tensor_v3": lambda st, off, size, stride, grad, hooks, dtype, *_: _rebuild_tensor(
        st, off, size, stride, dtype=dtype),
    "_rebuild_parameter": lambda data, *_: data,
    "_rebuild_parameter_with_state": lambda data, *_: data,
}


class _StateDictUnpickler(pickle.Unpickler):
  """Unpickles torch's data.pkl admitting only what a state dict of tensors needs."""

  def __init__(self, file, zip_path: str, members: dict, prefix: str):
    super().__init__(file)
    self.zip_path, self.members, self.prefix = zip_path, members, prefix

  def find_class(self, module, name):
    if module == "torch._utils" and name in _REBUILDERS:
      return _REBUILDERS[name]
    if module in ("torch", "torch.storage") and name in _STORAGES:
      return np.dtype(_TORCH_DTYPES[_STORAGES[name]])
    if module == "torch" and name in _TORCH_DTYPES:
      return np.dtype(_TORCH_DTYPES[name])
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    raise pickle.UnpicklingError(
        f"{self.zip_path}: refusing to load global {module}.{name}: a PyTorch state dict needs "
        "only tensors, storages and OrderedDict, and any other global may run arbitrary code")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"{self.zip_path}: unexpected persistent id {pid!r}")
    _, dtype, key, _location, numel = pid
    member = f"{self.prefix}data/{key}"
    if member not in self.members:
      raise ValueError(f"{self.zip_path}: storage {member} is missing from the archive")
    info = self.members[member]
    if info.compress_type == zipfile.ZIP_STORED:
      offset, name = _member_data_offset(self.zip_path, info), None
    else:
      offset, name = 0, member
    return LazyTensor(self.zip_path, offset, dtype, (numel,), member=name), numel


def _member_data_offset(path: str, info: zipfile.ZipInfo) -> int:
  """Byte offset of an uncompressed zip member's data: after its local header and extra field."""
  with open(path, "rb") as f:
    f.seek(info.header_offset)
    header = f.read(30)
  if header[:4] != b"PK\x03\x04":
    raise ValueError(f"{path}: bad local zip header for {info.filename}")
  name_len, extra_len = struct.unpack("<HH", header[26:30])
  return info.header_offset + 30 + name_len + extra_len


def read_pytorch_bin(path: str) -> dict:
  """name -> LazyTensor of a `torch.save(state_dict)` file (the zip format of torch >= 1.6)."""
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path} is not a zip archive: the legacy (torch < 1.6) format is not "
                     "supported; re-save it with a current torch or as safetensors")
  with zipfile.ZipFile(path) as zf:
    members = {info.filename: info for info in zf.infolist()}
    pickles = [n for n in members if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise ValueError(f"{path}: expected one <archive>/data.pkl, found {pickles}")
    prefix = pickles[0][: -len("data.pkl")]
    order = prefix + "byteorder"
    if order in members and zf.read(order).decode().strip() != "little":
      raise ValueError(f"{path}: big-endian tensors are not supported")
    with zf.open(pickles[0]) as f:
      state = _StateDictUnpickler(f, path, members, prefix).load()
  if not isinstance(state, dict) or not all(isinstance(v, LazyTensor) for v in state.values()):
    raise ValueError(f"{path}: expected a flat state dict of tensors (name -> tensor)")
  return dict(state)


def _pickle_int(value: int) -> bytes:
  if -2**31 <= value < 2**31:
    return b"J" + struct.pack("<i", value)  # BININT
  raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
  return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def _pickle_str(value: str) -> bytes:
  raw = value.encode()
  return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _pickle_tuple(items) -> bytes:
  return b"(" + b"".join(_pickle_int(int(i)) for i in items) + b"t"  # MARK ... TUPLE


def _state_dict_pickle(arrays: dict) -> bytes:
  """The data.pkl torch writes for {name: contiguous tensor}, tensor k in storage "k"."""
  out = [b"\x80\x02}("]  # PROTO 2, EMPTY_DICT, MARK
  for key, (name, arr) in enumerate(arrays.items()):
    strides = [s // arr.itemsize for s in arr.strides] if arr.ndim else []
    storage = (b"(" + _pickle_str("storage") + b"ctorch\n" +
               _STORAGE_NAMES[arr.dtype].encode() + b"\n" + _pickle_str(str(key)) +
               _pickle_str("cpu") + _pickle_int(arr.size) + b"tQ")  # TUPLE, BINPERSID
    out.append(_pickle_str(name) + b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage +
               _pickle_int(0) + _pickle_tuple(arr.shape) + _pickle_tuple(strides) +
               b"\x89ccollections\nOrderedDict\n)RtR")  # NEWFALSE, OrderedDict(), TUPLE, REDUCE
  out.append(b"u.")  # SETITEMS, STOP
  return b"".join(out)


def write_pytorch_bin(path: str, tensors: dict, chunk_bytes: int = 64 * 1024**2) -> None:
  """Writes name -> np.ndarray as `torch.save(state_dict)` does (zip, data.pkl + data/<k>)."""
  arrays = {k: np.asarray(v, order="C") for k, v in tensors.items()}
  prefix = os.path.splitext(os.path.basename(path))[0] + "/"
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr(prefix + "data.pkl", _state_dict_pickle(arrays))
    zf.writestr(prefix + "byteorder", "little")
    for key, arr in enumerate(arrays.values()):
      flat = arr.reshape(-1).view(np.uint8)
      with zf.open(f"{prefix}data/{key}", "w", force_zip64=True) as f:
        for start in range(0, flat.size, chunk_bytes):
          f.write(flat[start:start + chunk_bytes].tobytes())
    zf.writestr(prefix + "version", "3\n")


# ------------------------------------------------------------------------------------ directories

_LAYOUTS = (("model.safetensors.index.json", ".safetensors", read_safetensors),
            ("pytorch_model.bin.index.json", ".bin", read_pytorch_bin))


def read_checkpoint(path: str) -> dict:
  """name -> LazyTensor of a Hugging Face checkpoint directory.

  The files listed by model.safetensors.index.json, else every *.safetensors file, else those of
  pytorch_model.bin.index.json, else every pytorch_model*.bin file (safetensors first, as
  transformers prefers them).
  """
  for index, suffix, reader in _LAYOUTS:
    if os.path.exists(os.path.join(path, index)):
      with open(os.path.join(path, index)) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    else:
      files = sorted(f for f in os.listdir(path) if f.endswith(suffix) and
                     (suffix == ".safetensors" or f.startswith("pytorch_model")))
    if files:
      tensors = {}
      for name in files:
        tensors.update(reader(os.path.join(path, name)))
      return tensors
  raise FileNotFoundError(f"no *.safetensors or pytorch_model*.bin weights in {path}")
