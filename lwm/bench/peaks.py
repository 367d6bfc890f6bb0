"""Dense bfloat16 peak TFLOP/s per JAX device, by `device.device_kind`, for MFU.

  peak_tflops("TPU v5 lite")            # 197.0
  peak_tflops("NVIDIA H100 80GB HBM3")  # 989.0 (H100 SXM)
  peak_tflops("TPU v4 lite")            # 137.5, not TPU v4's 275
  peak_tflops("Radeon")                 # None: unknown, no MFU

TPU kinds are matched exactly, as JAX reports them. A TPU whose TensorCores are separate JAX devices
(v2, v3, TPU7x: no megacore) gets half the chip's peak per device; v4 and v5p present one megacore
device per chip. GPU kinds are matched by a normalised (model, form factor): "NVIDIA A100-SXM4-80GB"
-> ("A100", "SXM"), "NVIDIA H100 PCIe" -> ("H100", "PCIe"); the model must be a whole word, so
"GH200" is not "H200". Figures are the vendors' dense (not sparse) bf16 numbers.
"""
import re

TPU_PEAKS = {
    "TPU v2": 45.0 / 2,
    "TPU v3": 123.0 / 2,
    "TPU v4": 275.0,  # megacore: one device per chip
    "TPU v4 lite": 137.5,  # v4i: one TensorCore
    "TPU v5 lite": 197.0,  # v5e
    "TPU v5": 459.0,  # v5p, megacore
    "TPU v6 lite": 918.0,  # v6e (Trillium)
    "TPU7x": 2307.0 / 2,  # Ironwood: two TensorCores per chip, each a device
}

GPU_PEAKS = {
    ("A100", "SXM"): 312.0, ("A100", "PCIe"): 312.0,
    ("H100", "SXM"): 989.0, ("H100", "PCIe"): 756.0, ("H100", "NVL"): 835.0,
    ("H200", "SXM"): 989.0, ("H200", "NVL"): 835.0,
    ("GH200", "SXM"): 989.0,
    ("B200", "SXM"): 2250.0,
    ("L4", "PCIe"): 121.0, ("L40S", "PCIe"): 362.0,
}

# Cards sold only as PCIe boards, whose kind names no form factor.
_PCIE_ONLY = {"L4", "L40S"}


def gpu_model(device_kind: str) -> tuple[str, str] | None:
  """("H100", "SXM" | "PCIe" | "NVL") from an NVIDIA device kind; None for other kinds."""
  if not device_kind.startswith("NVIDIA "):
    return None
  words = re.split(r"[\s\-]+", device_kind.removeprefix("NVIDIA ").strip().upper())
  model = words[0]
  if "PCIE" in words or model in _PCIE_ONLY:
    return model, "PCIe"
  return model, ("NVL" if "NVL" in words else "SXM")


def peak_tflops(device_kind: str) -> float | None:
  """Dense bf16 peak TFLOP/s of one device of this kind, or None when it is not in the table."""
  if device_kind in TPU_PEAKS:
    return TPU_PEAKS[device_kind]
  return GPU_PEAKS.get(gpu_model(device_kind))
