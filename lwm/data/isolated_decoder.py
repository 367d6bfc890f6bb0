"""Video decoding in a child process, with a time limit per video.

decord can crash its process on some corrupt files (a segfault in FFmpeg) or deadlock in `get_batch`
(dmlc/decord#373). Dask re-runs the tasks of a worker that died, but it would meet the same file
again, and it has no time limit for a running task. So each worker decodes in a helper process of
its own: a crash kills only the helper, a hang is ended by killing it, and either way the line
gets a failure of kind "crash" or "timeout" while the worker and the rest of its chunk carry on.

  decoder = IsolatedDecoder("lwm.data.video:decode_video", timeout_s=600)
  frames = decoder(path, 256, FrameSampling(max_frames=8))   # uint8 [n, 256, 256, 3]
  decoder.close()

The helper is `python -m lwm.data.isolated_decoder DECODER`; it speaks length-prefixed pickles on
its stdin/stdout (a private copy of stdout: whatever C libraries print goes to stderr).
"""
import importlib
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
import traceback

from lwm.data.video import VideoError

STARTUP_TIMEOUT_S = 300.0  # importing the decoder is not the video's fault
_HEADER = struct.Struct("<Q")


class DecoderCrashed(VideoError):
  """The decoder process died while decoding this video."""
  kind = "crash"


class DecoderTimedOut(VideoError):
  """Decoding this video took longer than the time limit."""
  kind = "timeout"


class DecoderUnavailable(RuntimeError):
  """The helper process could not start (the decoder cannot be imported): a setup error, not a
  property of any video, so it stops the run."""


def load_function(spec: str):
  """'package.module:function' -> the function."""
  module, _, name = spec.partition(":")
  if not module or not name:
    raise ValueError(f"decoder must be 'module:function', got {spec!r}")
  return getattr(importlib.import_module(module), name)


def _send(stream, value) -> None:
  data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
  stream.write(_HEADER.pack(len(data)) + data)
  stream.flush()


def _read_exactly(fd: int, size: int, deadline: float | None) -> bytes | None:
  """`size` bytes from fd; None at end of file; raises TimeoutError past `deadline`."""
  parts, left = [], size
  while left:
    if deadline is not None:
      wait = deadline - time.monotonic()
      if wait <= 0 or not select.select([fd], [], [], wait)[0]:
        raise TimeoutError
    part = os.read(fd, min(left, 1 << 20))
    if not part:
      return None
    parts.append(part)
    left -= len(part)
  return b"".join(parts)


def _receive(fd: int, deadline: float | None):
  """The next message from the helper; None if it died."""
  header = _read_exactly(fd, _HEADER.size, deadline)
  if header is None:
    return None
  data = _read_exactly(fd, _HEADER.unpack(header)[0], deadline)
  return None if data is None else pickle.loads(data)


def _package_root() -> str:
  """The directory holding this `lwm`, so the helper imports the same code as its parent."""
  return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class IsolatedDecoder:
  """Calls `decoder(path, size, sampling)` in a helper process; see the module docstring.

  Raises what the decoder raises (VideoError and its kinds), DecoderCrashed or DecoderTimedOut for
  the video, DecoderUnavailable if the helper cannot start at all.
  """

  def __init__(self, decoder: str, timeout_s: float):
    self.decoder, self.timeout_s = decoder, timeout_s
    self._process = None

  def _start(self) -> None:
    env = dict(os.environ)
    # Dask's nanny sets this for worker processes; it makes decoding ~3x slower (measured, see
    # docs/data.md), and a helper's memory lives one video long.
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH")) if p)
    self._process = subprocess.Popen(
        [sys.executable, "-m", "lwm.data.isolated_decoder", self.decoder],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    message = _receive(self._process.stdout.fileno(), time.monotonic() + STARTUP_TIMEOUT_S)
    if message is None or message[0] != "ready":
      detail = message[1] if message else f"exit status {self._stop()}"
      self._stop()
      raise DecoderUnavailable(f"the decoder process for {self.decoder!r} did not start: {detail}")

  def _stop(self):
    process, self._process = self._process, None
    if process is None:
      return None
    process.kill()
    for stream in (process.stdin, process.stdout):
      stream.close()
    return process.wait()

  def __call__(self, path: str, size: int, sampling):
    if self._process is not None and self._process.poll() is not None:
      self._stop()  # it died between videos (its parent thread ended?): not this video's fault
    if self._process is None:
      self._start()
    try:
      _send(self._process.stdin, (path, size, sampling))
      reply = _receive(self._process.stdout.fileno(), time.monotonic() + self.timeout_s)
    except TimeoutError:
      self._stop()
      raise DecoderTimedOut(f"decoding {path} took longer than line_timeout_s={self.timeout_s:g} s "
                            "(a decoder hang?)") from None
    except BrokenPipeError:
      reply = None
    if reply is None:
      status = self._stop()
      how = (f"signal {signal.Signals(-status).name}" if status is not None and status < 0
             else f"exit status {status}")
      raise DecoderCrashed(f"the decoder process died ({how}) while decoding {path}")
    kind, value = reply
    if kind == "error":
      raise value
    return value

  def close(self) -> None:
    self._stop()

  def __del__(self):
    try:
      self._stop()
    except Exception:  # noqa: BLE001 -- at interpreter exit the child dies with its pipes anyway
      pass


def _die_with_parent() -> None:
  """Linux: the kernel kills this process when its parent dies (a worker killed with SIGKILL
  cannot stop a helper stuck in a decoder). Elsewhere a helper exits when its stdin closes."""
  try:
    import ctypes
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


def _serve(decoder_spec: str) -> None:
  """The helper's loop: one request (path, size, sampling) at a time until stdin closes."""
  _die_with_parent()
  replies = os.fdopen(os.dup(1), "wb")
  os.dup2(2, 1)  # stray prints from C libraries must not corrupt the replies
  try:
    decoder = load_function(decoder_spec)
  except Exception:  # noqa: BLE001 -- reported to the parent, which raises DecoderUnavailable
    _send(replies, ("fatal", traceback.format_exc(limit=3)))
    return
  try:
    import decord  # noqa: F401 -- imported now, so that the first video's time limit excludes it
  except ImportError:
    pass
  _send(replies, ("ready", None))
  while (request := _receive(0, None)) is not None:  # 0: stdin
    try:
      reply = ("ok", decoder(*request))
    except Exception as e:  # noqa: BLE001 -- the parent raises it as if the call were local
      try:
        pickle.dumps(e)
      except Exception:  # noqa: BLE001
        e = RuntimeError(f"{type(e).__name__}: {e}")
      reply = ("error", e)
    _send(replies, reply)


if __name__ == "__main__":
  _serve(sys.argv[1])
