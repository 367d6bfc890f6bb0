"""The peak table behind MFU (`lwm.bench.peaks`): device kinds as JAX reports them -> dense bf16
TFLOP/s per device (vendor figures, written out here by hand)."""
import pytest

from lwm.bench import peaks


@pytest.mark.parametrize("kind, tflops", [
    ("TPU v4", 275.0),
    ("TPU v4 lite", 137.5),  # v4i: not TPU v4, although "TPU v4" is a prefix of it
    ("TPU v5 lite", 197.0),  # v5e
    ("TPU v5", 459.0),  # v5p
    ("TPU v6 lite", 918.0),  # v6e
    ("TPU7x", 1153.5),  # half a chip's 2307: each TensorCore is a device
    ("TPU v3", 61.5),
    ("NVIDIA H100 80GB HBM3", 989.0),  # SXM
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0),
    ("NVIDIA GH200 480GB", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100-SXM4-40GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0),
    ("NVIDIA B200", 2250.0),
    ("NVIDIA L4", 121.0),
])
def test_known_kinds(kind, tflops):
  assert peaks.peak_tflops(kind) == tflops


@pytest.mark.parametrize("kind", ["cpu", "TPU v9", "TPU v5 lite pod", "NVIDIA GeForce RTX 4090",
                                  "NVIDIA H1000", "AMD Instinct MI300X", ""])
def test_unknown_kinds_have_no_peak(kind):
  assert peaks.peak_tflops(kind) is None


def test_gpu_model_names_are_normalised():
  assert peaks.gpu_model("NVIDIA A100-SXM4-80GB") == ("A100", "SXM")
  assert peaks.gpu_model("NVIDIA H100 PCIe") == ("H100", "PCIe")
  assert peaks.gpu_model("NVIDIA GH200 480GB") == ("GH200", "SXM")
  assert peaks.gpu_model("TPU v4") is None
