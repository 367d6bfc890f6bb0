"""scripts/eval_needle.py with needle values drawn only from the held-out pool (divisible by 4).

  python -m lwm.demo.eval_held_out --checkpoint out/stage2 --mode text --digits 2 ...

Takes eval_needle.py's flags. Evaluation draws every value through `needle.cell_rng(...)`'s
`integers(low, high)`; this wraps that generator so `integers` picks among the held-out values in
[low, high) instead, and leaves every other draw (keys, depths) as it is.
"""
import os
import sys

import numpy as np

from lwm.demo import corpus


class HeldOutValues:
  """A numpy Generator whose integers(low, high) draws held-out values only."""

  def __init__(self, rng: np.random.Generator):
    self.rng = rng

  def integers(self, low, high=None, *args, **kwargs):
    pool = [v for v in range(int(low), int(high)) if corpus.is_held_out(str(v))]
    if high is None or args or kwargs or not pool:
      raise ValueError(f"integers({low}, {high}) is not a value draw with held-out values")
    return pool[int(self.rng.integers(len(pool)))]

  def __getattr__(self, name):
    return getattr(self.rng, name)


def main(argv=None) -> None:
  from lwm.eval import needle
  cell_rng = needle.cell_rng
  needle.cell_rng = lambda seed, cell: HeldOutValues(cell_rng(seed, cell))
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
  import eval_needle
  eval_needle.main(argv)


if __name__ == "__main__":
  main()
