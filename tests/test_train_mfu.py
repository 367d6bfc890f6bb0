"""MFU in the training log: a known device kind gives a peak, an unknown one says so once and
leaves the mfu key out (not 0%)."""
import ml_collections

from lwm import train
from lwm.metrics import Throughput


def stage(peak_tflops=0.0):
  return ml_collections.ConfigDict({"train": {"peak_tflops_per_device": peak_tflops}})


def test_known_kind_and_the_config_override():
  assert train.peak_flops(stage(), "TPU v4 lite") == 137.5e12
  assert train.peak_flops(stage(), "NVIDIA H100 80GB HBM3") == 989e12
  assert train.peak_flops(stage(100.0), "mystery chip") == 100e12


def test_unknown_kind_logs_once_and_reports_no_mfu():
  lines = []
  peak = train.peak_flops(stage(), "TPU v9", log=lambda *a: lines.append(a[0] % a[1:]))
  assert peak == 0.0
  assert lines == ["unknown peak (device kind TPU v9): no MFU in the metrics; set "
                   "train.peak_tflops_per_device to report it"]
  speed = Throughput(tokens_per_step=100, flops_per_step=1e9, peak_flops=peak)
  record = speed.window(1)
  assert "mfu" not in record and record["tokens_per_second"] > 0
  known = Throughput(tokens_per_step=100, flops_per_step=1e9, peak_flops=1e12).window(1)
  assert 0 < known["mfu"]
