"""scripts/device_check.py --smoke: the device script's rows, tiny, on the CPU (2 simulated
devices, Pallas in interpret mode). Every row has figures or the reason it is missing; the rows a
CPU cannot give say why."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_smoke_writes_every_row_or_its_reason(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)
  output = tmp_path / "check.json"
  subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "device_check.py"), "--smoke",
                  "--output", str(output)], env=env, check=True, capture_output=True, text=True,
                 timeout=300)
  report = json.loads(output.read_text())
  assert set(report) == {"device", "settings", "seconds", "rows"}
  assert report["device"]["platform"] == "cpu" and report["device"]["count"] == 2
  rows = {(r["section"], r["name"]): r for r in report["rows"]}
  for key, r in rows.items():
    assert bool(r.get("figures")) != bool(r.get("missing")), key  # one of the two, not empty

  assert rows["self_check", "pallas_gpu"]["figures"]["ok"] is True  # interpret mode on the CPU
  assert "this host is cpu" in rows["self_check", "pallas_tpu"]["missing"]
  assert rows["self_check", "auto"]["figures"]["uses"] == "xla"
  for name in ("kernel 128", "ring x2 (auto) 128"):
    assert rows["attention", name]["figures"]["tflops"] > 0
  assert "needs an NVIDIA GPU" in rows["attention", "cudnn 128"]["missing"]
  train = rows["train_step", "tiny x2 sp, 256 tokens"]["figures"]
  assert train["seconds"] > 0 and train["mfu_missing"] == "unknown peak (device kind cpu)"
  assert "mfu" not in train
  memory = rows["memory", "tiny x2 sp, 256 tokens"]["figures"]
  assert memory["planned_gib"] > 0 and memory["compiled_gib"] > 0
  assert "no peak on cpu" in memory["measured_missing"]

  table = (tmp_path / "check.md").read_text()
  assert table.count("\n| ") == len(report["rows"]) + 1  # the header and one line per row
  assert "| attention | cudnn 128 | missing: cuDNN attention needs an NVIDIA GPU" in table
