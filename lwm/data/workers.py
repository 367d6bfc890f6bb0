"""Running work in processes that may die: a decoder can crash (segfault) on a corrupt file, and one
bad video must not stop a long preprocessing run.

`run_bounded` keeps at most `workers` items in flight, so when a worker dies only those items are
suspects; the caller reruns them with less in flight until the one that kills a process alone is
found.
"""
import concurrent.futures
import multiprocessing
from concurrent.futures.process import BrokenProcessPool


def run_bounded(items, fn, workers: int, initializer, initargs, on_result) -> list:
  """Calls fn(*item) for each item in `workers` spawned processes; on_result(item, value) in the
  parent as each finishes. Returns the items that were in flight when a worker process died."""
  queue, suspects = list(items), []
  context = multiprocessing.get_context("spawn")  # JAX is not fork-safe
  while queue:
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=initializer,
                                                initargs=initargs) as pool:
      in_flight = {}
      while queue or in_flight:
        while queue and len(in_flight) < workers:
          item = queue.pop(0)
          in_flight[pool.submit(fn, *item)] = item
        done, _ = concurrent.futures.wait(in_flight, return_when=concurrent.futures.FIRST_COMPLETED)
        broken = False
        for future in done:
          item = in_flight.pop(future)
          try:
            value = future.result()
          except BrokenProcessPool:
            broken = True
            suspects.append(item)
            continue
          on_result(item, value)
        if broken:  # the pool is dead: whatever is still in flight died with it
          for future, item in in_flight.items():
            if future.done() and future.exception() is None:
              on_result(item, future.result())
            else:
              suspects.append(item)
          break
  return suspects
