"""Running work in processes that may die or hang: a decoder can crash on a corrupt file or
deadlock (dmlc/decord#373), and one bad video must not stop a long preprocessing run.

`run_bounded` keeps at most `workers` items in flight, so when a worker dies, or an item overruns
its time and the pool is killed, only those items are suspects; the caller reruns them with less
in flight until the one that fails alone is found.
"""
import concurrent.futures
import multiprocessing
import time
from concurrent.futures.process import BrokenProcessPool


def _kill(pool) -> None:
  # ProcessPoolExecutor has no public way to stop a hung worker before Python 3.14.
  for process in list(getattr(pool, "_processes", {}).values()):
    process.kill()


def run_bounded(items, fn, workers: int, initializer, initargs, on_result,
                timeout_for=lambda item: None) -> list:
  """Calls fn(*item) for each item in `workers` spawned processes; on_result(item, value) in the
  parent as each finishes. timeout_for(item): seconds an item may run (None: no limit).

  Returns [(item, "died" | "timeout")] for the items in flight when a worker died or overran.
  """
  queue, suspects = list(items), []
  context = multiprocessing.get_context("spawn")  # JAX is not fork-safe
  while queue:
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                  initializer=initializer, initargs=initargs)
    in_flight, broken = {}, None
    while (queue or in_flight) and broken is None:
      while queue and len(in_flight) < workers:
        item = queue.pop(0)
        limit = timeout_for(item)
        in_flight[pool.submit(fn, *item)] = (item, None if limit is None else time.monotonic() + limit)
      deadlines = [d for _, d in in_flight.values() if d is not None]
      wait = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
      done, _ = concurrent.futures.wait(in_flight, timeout=wait,
                                        return_when=concurrent.futures.FIRST_COMPLETED)
      for future in done:
        item, _ = in_flight.pop(future)
        try:
          on_result(item, future.result())
        except BrokenProcessPool:
          broken = "died"
          suspects.append((item, broken))
      if broken is None and not done and deadlines:
        overdue = [f for f, (_, d) in in_flight.items() if d is not None and d <= time.monotonic()]
        if overdue:
          broken = "timeout"
          for future in overdue:
            suspects.append((in_flight.pop(future)[0], broken))
          _kill(pool)
    if broken is not None:  # the pool is dead: whatever is still in flight died with it
      for future, (item, _) in in_flight.items():
        if future.done() and future.exception() is None:
          on_result(item, future.result())
        else:
          suspects.append((item, "died"))
    pool.shutdown(wait=True, cancel_futures=True)
  return suspects
