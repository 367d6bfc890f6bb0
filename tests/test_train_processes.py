"""Training as a user runs it (scripts/train.py in subprocesses): exact resume after SIGKILL, and
2 processes x 4 devices giving the losses of 1 process x 8 devices."""
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import training_data
from lwm.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 9


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return training_data.make_text_dataset(str(tmp_path_factory.mktemp("text")))


def command(workdir, data, *extra):
  return [sys.executable, os.path.join(ROOT, "scripts", "train.py"),
          "--config", os.path.join(ROOT, "configs", "tiny.py") + ":stage1", "--workdir", workdir,
          f"--config.data.path={data}", "--config.seq_len=256", f"--config.train.steps={STEPS}",
          "--config.train.log_every=1", "--config.checkpoint.every=3", "--config.mesh=1,2,1,4",
          *extra]


def clean_env():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # scripts/train.py sizes the simulated devices from the config
  return env


def wait_for_steps(process, workdir, steps):
  """Blocks until `steps` lines of metrics.jsonl exist (or the process ends)."""
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= steps:
      return
    time.sleep(0.05)


def run(cmd):
  result = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]


def final_params(workdir):
  """The last step's parameters, onto this process's first device whatever mesh saved them."""
  path = os.path.join(workdir, "checkpoints", str(STEPS), "params")
  checkpointer = ocp.StandardCheckpointer()
  stored = checkpointer.metadata(path)
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
                        getattr(stored, "item_metadata", stored))
  return [np.asarray(x) for x in jax.tree.leaves(checkpointer.restore(path, target))]


def comparable(metrics):
  return [{k: m[k] for k in ("step", "loss", "grad_norm", "lr")} for m in metrics]


def test_resume_after_sigkill_is_exact(dataset, tmp_path):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  run(command(straight, dataset))

  process = subprocess.Popen(command(resumed, dataset), env=clean_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  wait_for_steps(process, resumed, 5)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert len(read_metrics(resumed)) < STEPS, "the run finished before it could be killed"
  # What Orbax leaves behind when a process dies while writing a step: it must never be loaded.
  partial = os.path.join(resumed, "checkpoints", "8.orbax-checkpoint-tmp")
  os.makedirs(os.path.join(partial, "params"), exist_ok=True)
  with open(os.path.join(partial, "params", "junk"), "w") as f:
    f.write("half-written")

  run(command(resumed, dataset))
  assert comparable(read_metrics(resumed)) == comparable(read_metrics(straight))
  for a, b in zip(final_params(resumed), final_params(straight), strict=True):
    np.testing.assert_array_equal(a, b)


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_two(workdir, data, *extra):
  address = f"127.0.0.1:{free_port()}"
  return [subprocess.Popen(
      command(workdir, data, f"--coordinator_address={address}", "--num_processes=2",
              f"--process_id={i}", *extra),
      env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]


def finish(processes):
  outputs = [p.communicate(timeout=600)[0] for p in processes]
  assert all(p.returncode == 0 for p in processes), outputs[0][-3000:] + outputs[1][-3000:]
  return outputs


@pytest.fixture(scope="module")
def two_processes(dataset, tmp_path_factory):
  """An uninterrupted run of 2 processes x 4 devices."""
  workdir = str(tmp_path_factory.mktemp("two") / "run")
  finish(start_two(workdir, dataset))
  return workdir


def test_two_processes_match_one(dataset, two_processes, tmp_path):
  single = str(tmp_path / "single")
  run(command(single, dataset))
  got, want = read_metrics(two_processes), read_metrics(single)
  assert [m["step"] for m in got] == [m["step"] for m in want]
  np.testing.assert_allclose([m["loss"] for m in got], [m["loss"] for m in want], rtol=1e-6)


@pytest.mark.slow
def test_sigterm_to_one_process_saves_the_same_step_everywhere(dataset, two_processes, tmp_path):
  workdir = str(tmp_path / "run")
  processes = start_two(workdir, dataset, "--config.checkpoint.every=100")
  wait_for_steps(processes[0], workdir, 2)
  processes[1].send_signal(signal.SIGTERM)  # process 0 hears of it only through JAX
  outputs = finish(processes)
  saved = [re.findall(r"preempted \(SIGTERM\): saved step (\d+)", out) for out in outputs]
  assert saved[0] == saved[1] and len(saved[0]) == 1, outputs[0][-2000:] + outputs[1][-2000:]
  from lwm import checkpoint
  assert checkpoint.latest_step(workdir) == int(saved[0][0]) < STEPS

  finish(start_two(workdir, dataset, "--config.checkpoint.every=100"))  # the rerun resumes
  assert comparable(read_metrics(workdir)) == comparable(read_metrics(two_processes))
  for a, b in zip(final_params(workdir), final_params(two_processes), strict=True):
    np.testing.assert_array_equal(a, b)


def test_misspelt_override_fails_loudly(dataset, tmp_path):
  result = subprocess.run(command(str(tmp_path / "run"), dataset, "--config.train.stepz=3"),
                          env=clean_env(), capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "stepz" in result.stderr
  assert not (tmp_path / "run").exists()


def test_sigterm_saves_the_current_step(dataset, tmp_path):
  workdir = str(tmp_path / "run")
  process = subprocess.Popen(command(workdir, dataset, "--config.checkpoint.every=100"),
                             env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
  wait_for_steps(process, workdir, 2)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr[-3000:]
  from lwm import checkpoint
  saved = checkpoint.latest_step(workdir)
  assert saved is not None and 2 <= saved < STEPS
  assert read_metrics(workdir)[-1]["step"] == saved
