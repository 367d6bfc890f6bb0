"""Preprocessing on a real multi-process Dask cluster on 127.0.0.1 (a `dask scheduler` and two
`dask worker` processes started and stopped by the test) writes the same dataset as a 1-worker
local cluster, also when a worker or the driver is killed with SIGKILL midway.

The corpus has several containers and codecs, bad JSON, missing and broken files, a video that
crashes the decoder and one that hangs it. The reference is a run with one local worker process;
each comparison covers every example (line, tokens, masks), failures.jsonl and summary.json (less
its "run" part: retries and resumed chunks) and the packing index.
"""
import glob
import os
import signal
import time

import pytest

import data_testing
from lwm.data import chunks
from lwm.data.preprocess import PreprocessOptions, preprocess
from lwm.data.video import FrameSampling

TIMEOUT_S = 4.0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("cluster"))
  manifest, expected = data_testing.fault_corpus(root, seed=3)
  tok, vq = data_testing.tokenizer_and_vqgan(root, expected)
  options = PreprocessOptions(manifest=manifest, output=os.path.join(root, "reference"),
                              tokenizer=tok, vqgan=vq, sampling=FrameSampling(max_frames=4),
                              chunk_size=2, line_timeout_s=TIMEOUT_S,
                              decoder=data_testing.FAULTY_DECODER)
  summary = preprocess(options, workers=1, progress=False)
  assert summary["failures_by_kind"]["crash"] == summary["failures_by_kind"]["timeout"] == 1
  return root, options, expected


def script_args(options, output, *extra):
  return ["scripts/preprocess.py", "--manifest", options.manifest, "--output", output,
          "--tokenizer", options.tokenizer, "--vqgan", options.vqgan, "--max-frames", "4",
          "--chunk-size", "2", "--line-timeout", str(TIMEOUT_S), "--decoder", options.decoder,
          *extra]


def run_script(options, output, cluster, *extra):
  return data_testing.python(*script_args(options, output, "--scheduler-file",
                                          cluster.scheduler_file, *extra))


@pytest.fixture
def cluster(corpus, request, tmp_path):
  cluster = data_testing.Cluster(str(tmp_path), getattr(request, "param", [[], []]))
  yield cluster
  cluster.stop()


def finish(process, timeout=300):
  output = process.communicate(timeout=timeout)[0].decode()
  assert process.returncode == 0, output[-3000:]
  return output


@pytest.mark.slow
@pytest.mark.parametrize("cluster", [[["--resources", "GPU=1"], []]], indirect=True)
def test_two_separate_workers_equal_one_local_worker(corpus, cluster):
  root, options, _ = corpus
  output = os.path.join(root, "separate")
  finish(run_script(options, output, cluster, "--encoder-resources", "GPU=1"))
  assert data_testing.outputs(output) == data_testing.outputs(options.output)
  gpu = [address for address, w in cluster.info().items() if w["resources"].get("GPU")]
  encoded_by = {chunks.read_record(p)["worker"]
                for p in glob.glob(os.path.join(output, "work", chunks.PATTERN))}
  assert encoded_by == set(gpu)  # every encode task went to the worker that declares GPU=1


def _attempts(output, stage):
  """{chunk index: [worker addresses that started it]} from the task attempt markers."""
  found = {}
  for path in glob.glob(os.path.join(output, "work", "attempts", f"*.{stage}.*")):
    with open(path) as f:
      found.setdefault(int(path.split(".")[-2]), []).append(f.read())
  return found


@pytest.mark.slow
def test_a_worker_killed_mid_run_costs_only_a_retry(corpus, cluster):
  root, options, expected = corpus
  output = os.path.join(root, "worker_killed")
  hang_chunk = (len(expected) - 1) // options.chunk_size  # the hanging video is the last line
  driver = run_script(options, output, cluster)
  deadline = time.time() + 240
  while hang_chunk not in _attempts(output, "decode") and time.time() < deadline:
    time.sleep(0.05)
  victim = _attempts(output, "decode")[hang_chunk][0]  # decoding the hanging video for seconds
  cluster.workers[int(cluster.info()[victim]["name"])].send_signal(signal.SIGKILL)
  finish(driver)
  assert data_testing.outputs(output) == data_testing.outputs(options.output)
  summary = data_testing.read_json(os.path.join(output, "summary.json"))
  assert summary["run"]["task_retries"] >= 1


@pytest.mark.slow
def test_a_killed_driver_reruns_to_the_same_dataset(corpus, cluster):
  root, options, _ = corpus
  output = os.path.join(root, "driver_killed")
  driver = run_script(options, output, cluster)
  deadline = time.time() + 240
  while len(glob.glob(os.path.join(output, "work", chunks.PATTERN))) < 3 and time.time() < deadline:
    time.sleep(0.05)
  assert driver.poll() is None, "the run finished before it could be killed"
  driver.send_signal(signal.SIGKILL)
  driver.wait()
  driver.stdout.close()
  assert not os.path.exists(os.path.join(output, "summary.json"))
  finish(run_script(options, output, cluster))
  assert data_testing.outputs(output) == data_testing.outputs(options.output)
  summary = data_testing.read_json(os.path.join(output, "summary.json"))
  assert summary["run"]["chunks_resumed"] >= 3


def test_text_lines_on_two_separate_workers_equal_a_run_in_this_process(tmp_path):
  """The fast one, in the default suite: text and broken lines only (no VQGAN, so the workers never
  start JAX), on the separate cluster against one worker thread in this process."""
  import json
  from lwm.data import synthetic, text_tokenizer
  import numpy as np
  rng = np.random.default_rng(0)
  texts = [synthetic.random_text(rng, int(rng.integers(3, 60))) for _ in range(9)]
  raw = [json.dumps({"text": t}).encode() for t in texts] + [b"not json", b'{"text": 3}']
  manifest = tmp_path / "m.jsonl"
  manifest.write_bytes(b"\n".join(raw[i] for i in rng.permutation(len(raw))) + b"\n")
  tok = text_tokenizer.train_tokenizer(texts, str(tmp_path / "tok.model"), vocab_size=300)
  options = PreprocessOptions(manifest=str(manifest), output=str(tmp_path / "here"), tokenizer=tok,
                              vqgan=None, chunk_size=2)
  preprocess(options, progress=False)
  cluster = data_testing.Cluster(str(tmp_path), [[], []])
  try:
    driver = data_testing.python("scripts/preprocess.py", "--manifest", str(manifest), "--output",
                                 str(tmp_path / "there"), "--tokenizer", tok, "--chunk-size", "2",
                                 "--scheduler", cluster.address())
    finish(driver)
  finally:
    cluster.stop()
  there = data_testing.outputs(str(tmp_path / "there"))
  assert there == data_testing.outputs(options.output)
  assert there[2]["examples"] == 9 and there[2]["failures_by_kind"] == {"json": 1, "fields": 1}
