"""Importing a HF checkpoint streams: peak host RSS stays under 1.5x the checkpoint's size.

Runs scripts/bench/import_memory.py --format hf on a 0.46 GB random checkpoint in both layouts,
with every stacked weight written layer by layer (the path a 7B takes). On the CPU backend the
imported parameters are themselves host memory (1x); holding the checkpoint twice would pass 2x.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_peak_rss_of_an_import_is_under_one_and_a_half_checkpoints(tmp_path):
  command = [sys.executable, os.path.join(ROOT, "scripts", "bench", "import_memory.py"),
             "--format", "hf",
             "--layers", "2", "--layouts", "safetensors,bin", "--stack-on-host-mb", "0",
             "--dir", str(tmp_path)]
  env = {**os.environ, "PYTHONPATH": ROOT}
  out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
  rows = [line.split() for line in out.splitlines()[1:] if line.strip()]
  assert [r[0] for r in rows] == ["hf/safetensors", "hf/bin"], out
  for row in rows:
    file_mb, grew_over_file = float(row[2]), float(row[-1])
    assert file_mb > 400 and grew_over_file < 1.5, out
