"""A profiled tiny run's peak resident memory stays near an unprofiled one's (issue 28, item 5:
the same run with a trace of steps 3-5 once grew to 6 GB, then to an OOM, against 0.9 GB)."""
import os
import subprocess
import sys
import time

import psutil
import pytest

import training_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT = 6 * 2**30  # a run past this is killed: the test fails without taking the host down


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return training_data.make_text_dataset(str(tmp_path_factory.mktemp("text")))


def peak_rss(data: str, workdir: str, *extra: str) -> int:
  command = [sys.executable, os.path.join(ROOT, "scripts", "train.py"),
             "--config", os.path.join(ROOT, "configs", "tiny.py") + ":stage1",
             "--workdir", workdir, f"--config.data.path={data}", "--config.train.steps=4",
             "--config.seq_len=512", "--config.checkpoint.every=100", *extra]
  proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env=dict(os.environ, PYTHONPATH=ROOT))
  process, peak = psutil.Process(proc.pid), 0
  while proc.poll() is None:
    try:
      peak = max(peak, process.memory_info().rss)
    except psutil.Error:
      pass
    if peak > LIMIT:
      proc.kill()
    time.sleep(0.05)
  stderr = proc.stderr.read().decode()
  assert proc.returncode == 0, (f"peak {peak / 2**30:.2f} GB, exit {proc.returncode}: "
                                f"{stderr[-2000:]}")
  return peak


def test_profiled_run_peak_memory_is_near_the_unprofiled(dataset, tmp_path):
  plain = peak_rss(dataset, str(tmp_path / "plain"))
  profiled = peak_rss(dataset, str(tmp_path / "profiled"), "--config.train.profile_steps=2,3")
  assert list((tmp_path / "profiled" / "profile").rglob("*.xplane.pb"))
  assert profiled <= max(2.5 * plain, plain + 1.5 * 2**30), (profiled / 2**30, plain / 2**30)
