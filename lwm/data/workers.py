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

_POLL_S = 0.2


def _init_and_signal(ready, initializer, initargs) -> None:
  initializer(*initargs)
  ready.set()


def _kill(pool) -> None:
  # ProcessPoolExecutor has no public way to stop a hung worker before Python 3.14.
  for process in list(getattr(pool, "_processes", {}).values()):
    process.kill()


def run_bounded(items, fn, workers: int, initializer, initargs, on_result,
                timeout_for=lambda item: None) -> list:
  """Calls fn(*item) for each item in `workers` spawned processes; on_result(item, value) in the
  parent as each finishes. timeout_for(item): seconds an item may run (None: no limit), counted
  from when a worker is ready (starting JAX takes seconds and is not the item's fault).

  Returns [(item, "died" | "timeout")] for the items in flight when a worker died or overran.
  Raises RuntimeError if the workers die before any of them has started.
  """
  queue, suspects = list(items), []
  context = multiprocessing.get_context("spawn")  # JAX is not fork-safe
  while queue:
    ready = context.Event()
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_and_signal,
        initargs=(ready, initializer, initargs))
    in_flight, broken, ready_at = {}, None, None
    while (queue or in_flight) and broken is None:
      while queue and len(in_flight) < workers:
        item = queue.pop(0)
        in_flight[pool.submit(fn, *item)] = (item, time.monotonic(), timeout_for(item))
      if ready_at is None and ready.is_set():
        ready_at = time.monotonic()
      deadlines = {f: max(start, ready_at) + limit for f, (_, start, limit) in in_flight.items()
                   if limit is not None and ready_at is not None}
      wait = min(deadlines.values(), default=None)  # None: no limit, wait for a result
      if ready_at is None:
        wait = _POLL_S
      elif wait is not None:
        wait = max(0.0, wait - time.monotonic())
      done, _ = concurrent.futures.wait(in_flight, timeout=wait,
                                        return_when=concurrent.futures.FIRST_COMPLETED)
      for future in done:
        item = in_flight.pop(future)[0]
        try:
          on_result(item, future.result())
        except BrokenProcessPool:
          if not ready.is_set():
            raise RuntimeError("preprocessing workers died while starting (tokenizer or VQGAN "
                               "files?); run with --workers 0 to see the error") from None
          broken = "died"
          suspects.append((item, broken))
      overdue = [f for f, d in deadlines.items() if f in in_flight and d <= time.monotonic()]
      if broken is None and overdue:
        broken = "timeout"
        for future in overdue:
          suspects.append((in_flight.pop(future)[0], broken))
        _kill(pool)
    if broken is not None:  # the pool is dead: whatever is still in flight died with it
      for future, (item, _, _) in in_flight.items():
        if future.done() and future.exception() is None:
          on_result(item, future.result())
        else:
          suspects.append((item, "died"))
    pool.shutdown(wait=True, cancel_futures=True)
  return suspects
