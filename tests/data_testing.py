"""Helpers for the preprocessing tests: a corpus with decoder faults, a Dask cluster of separate
processes on 127.0.0.1, and the contents of a written dataset."""
import json
import os
import shutil
import subprocess
import sys
import time

from lwm import vqgan
from lwm.data import load_examples, synthetic, text_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAULTY_DECODER = "lwm.data.synthetic:faulty_decode_video"


def fault_corpus(root: str, seed: int = 0) -> tuple[str, list[dict]]:
  """synthetic.build_corpus (several containers and codecs, bad JSON, missing and broken files)
  plus a video that crashes the decoder and one that hangs it (with FAULTY_DECODER)."""
  manifest, expected = synthetic.build_corpus(root, seed)
  with open(manifest, "a") as f:
    for name, kind in (("crash", "crash"), ("hang", "timeout")):
      shutil.copy(os.path.join(root, "clips/a.mp4"), os.path.join(root, f"clips/{name}.mp4"))
      f.write(json.dumps({"video": f"clips/{name}.mp4", "text": f"{name}s the decoder"}) + "\n")
      expected.append({"ok": False, "kind": kind})
  return manifest, expected


def tokenizer_and_vqgan(root: str, expected: list[dict]) -> tuple[str, str]:
  tok = text_tokenizer.train_tokenizer([e["text"] for e in expected if e["ok"]],
                                       os.path.join(root, "tok.model"), vocab_size=400)
  vqgan.save(os.path.join(root, "vq"), vqgan.create(vqgan.get_config("tiny"), 0))
  return tok, os.path.join(root, "vq")


def records(output: str) -> list:
  """Every example as a tuple, in the dataset's order."""
  return [(e["line"], e["tokens"].tolist(), e["vision_mask"].tolist(), e["loss_mask"].tolist(),
           e["num_frames"]) for e in load_examples(output)]


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def outputs(output: str) -> tuple:
  """(examples, failures.jsonl text, summary without its 'run' part, index.npz arrays)."""
  import numpy as np
  summary = read_json(os.path.join(output, "summary.json"))
  summary.pop("run")
  with open(os.path.join(output, "failures.jsonl")) as f:
    failures = f.read()
  with np.load(os.path.join(output, "index.npz")) as z:
    index = {k: z[k].tolist() for k in z.files}
  return records(output), failures, summary, index


def python(*args, **kwargs) -> subprocess.Popen:
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
  return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, **kwargs)


class Cluster:
  """`dask scheduler` and `dask worker` processes on 127.0.0.1, started and stopped by handle.

  workers: a list of extra arguments per worker (e.g. ["--resources", "GPU=1"]).
  """

  def __init__(self, folder: str, workers: list[list[str]]):
    self.scheduler_file = os.path.join(folder, "scheduler.json")
    self.scheduler = python("-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                            "--port", "0", "--no-dashboard",
                            "--scheduler-file", self.scheduler_file)
    self.workers = []
    try:
      self._wait(lambda: os.path.exists(self.scheduler_file), "the scheduler file")
      for i, extra in enumerate(workers):
        self.workers.append(python(
            "-m", "distributed.cli.dask_worker", "--scheduler-file", self.scheduler_file,
            "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny", "--no-dashboard",
            "--name", str(i), "--local-directory", folder, *extra))
      self._wait(lambda: len(self.info()) == len(workers), f"{len(workers)} workers")
    except BaseException:
      self.stop()
      raise

  def _wait(self, ready, what, timeout=120):
    deadline = time.time() + timeout
    while not ready():
      if time.time() > deadline or self.scheduler.poll() is not None:
        raise RuntimeError(f"the test cluster did not start: no {what}")
      time.sleep(0.2)

  def info(self) -> dict:
    """{worker address: {"name": its index in self.workers, "resources": {...}}}."""
    from distributed import Client
    with Client(scheduler_file=self.scheduler_file, timeout=30) as client:
      workers = client.scheduler_info(n_workers=-1)["workers"]
      return {address: {"name": w["name"], "resources": w.get("resources", {})}
              for address, w in workers.items()}

  def address(self) -> str:
    """tcp://127.0.0.1:PORT of the scheduler."""
    return read_json(self.scheduler_file)["address"]

  def stop(self):
    """Workers first (each closes while its scheduler still answers), then the scheduler."""
    for group in (self.workers, [self.scheduler]):
      for process in group:
        if process.poll() is None:
          process.terminate()
      for process in group:
        try:
          process.wait(20)
        except subprocess.TimeoutExpired:
          process.kill()
          process.wait()
        process.stdout.close()
