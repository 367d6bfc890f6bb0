"""LWM: vision-language stages from LWM-Text-1M, 1K to 1M tokens (the LWM paper's Table 13).

  python scripts/train.py --config configs/lwm_vision.py:1k --workdir workdirs/vision_1k \
      --config.data.path DATA_1K --config.init_from workdirs/text_1m
  python scripts/train.py --config configs/lwm_vision.py:8k --workdir workdirs/vision_8k \
      --config.data.path DATA_8K               # init_from defaults to workdirs/vision_1k
  ... 32k, 128k, 1m likewise.

Every stage: RoPE θ = 5e7, 8M tokens per batch, text and vision losses weighted 0.5 / 0.5; 1K and 8K
use a cosine schedule from 6e-4 to 6e-5, the longer stages a constant 8e-5 after warm-up.
"""
from lwm.stage import base_config

# seq_len, steps, warmup, peak lr, end lr (None: constant), mesh.
STAGES = {
    "1k": (1024, 45000, 1000, 6e-4, 6e-5, "1,-1,1,1"),
    "8k": (8192, 14000, 500, 6e-4, 6e-5, "1,-1,1,1"),
    "32k": (32768, 1200, 100, 8e-5, None, "1,-1,4,1"),
    "128k": (131072, 450, 50, 8e-5, None, "1,-1,8,1"),
    "1m": (1048576, 50, 5, 8e-5, None, "1,-1,16,4"),
}
BATCH_TOKENS = 8 * 2**20


def get_config(arg: str = "1k"):
  if arg not in STAGES:
    raise ValueError(f"configs/lwm_vision.py takes one of {list(STAGES)}, got {arg!r}")
  seq_len, steps, warmup, lr, end_lr, mesh = STAGES[arg]
  names = list(STAGES)
  c = base_config()
  c.model = "7b"
  c.seq_len, c.rope_theta, c.mesh = seq_len, 5e7, mesh
  c.init_from = "workdirs/text_1m" if arg == "1k" else f"workdirs/vision_{names[names.index(arg) - 1]}"
  c.train.steps, c.train.warmup_steps = steps, warmup
  c.train.batch_size = BATCH_TOKENS // seq_len
  c.train.lr = lr
  c.train.lr_schedule = "cosine" if end_lr else "constant"
  c.train.end_lr_ratio = end_lr / lr if end_lr else 1.0
  c.checkpoint.every = 500 if steps > 1000 else 50
  return c
