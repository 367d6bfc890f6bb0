"""The Dask cluster preprocessing runs on: a local one by default, any running one when given.

  with connect(workers=4) as client: ...                       # LocalCluster, 4 processes
  with connect(scheduler="tcp://10.0.0.1:8786") as client: ...  # `dask scheduler` somewhere
  with connect(scheduler_file="/shared/sched.json") as client: ...

A local cluster listens on 127.0.0.1 only, has no dashboard and logs only errors, so the user sees
the progress bar and nothing else of Dask. `workers=0` runs one worker thread inside this process
(a debugging aid: decoder crashes are still isolated, a crash of the process itself is not).
"""
import contextlib
import logging

import dask


def parse_resources(text: str | None) -> dict | None:
  """'GPU=1,MEM=2e9' -> {'GPU': 1.0, 'MEM': 2e9}; None or '' -> None."""
  if not text:
    return None
  resources = {}
  for item in text.split(","):
    name, sep, amount = item.partition("=")
    try:
      resources[name.strip()] = float(amount)
    except ValueError:
      sep = ""
    if not sep or not name.strip():
      raise ValueError(f"resources must look like 'GPU=1' or 'GPU=1,MEM=2e9', got {text!r}")
  return resources


@contextlib.contextmanager
def connect(workers: int = 0, scheduler: str | None = None, scheduler_file: str | None = None):
  """Yields a distributed.Client; a local cluster it started is closed on exit."""
  from distributed import Client, LocalCluster
  if scheduler and scheduler_file:
    raise ValueError(f"give a scheduler address ({scheduler!r}) or a scheduler file "
                     f"({scheduler_file!r}), not both")
  if scheduler or scheduler_file:
    with Client(scheduler, scheduler_file=scheduler_file) as client:
      yield client
    return
  if workers < 0:
    raise ValueError(f"workers must be >= 0, got {workers}")
  # Worker processes talk over TCP on loopback; a worker thread in this process needs no network.
  where = {"processes": True, "host": "127.0.0.1"} if workers else {"processes": False}
  with dask.config.set({ENVIRON: _without_malloc_trim()}):
    with LocalCluster(n_workers=max(workers, 1), threads_per_worker=1, dashboard_address=None,
                      silence_logs=logging.ERROR, **where) as cluster:
      with Client(cluster) as client:
        yield client


ENVIRON = "distributed.nanny.pre-spawn-environ"


def _without_malloc_trim() -> dict:
  """Dask's environment for worker processes less MALLOC_TRIM_THRESHOLD_=65536, which makes
  VQGAN encoding ~1.7x and decoding ~3x slower here (docs/data.md); our workers hold frames for
  one chunk, not the long-lived arrays that setting protects."""
  import distributed  # noqa: F401 -- loads distributed's config defaults
  environ = dict(dask.config.get(ENVIRON, {}))
  environ.pop("MALLOC_TRIM_THRESHOLD_", None)
  return environ


def declared(client, resources: dict) -> bool:
  """Whether some connected worker declares all of `resources`."""
  workers = client.scheduler_info(n_workers=-1)["workers"].values()
  return any(all(w.get("resources", {}).get(k, 0) >= v for k, v in resources.items())
             for w in workers)
