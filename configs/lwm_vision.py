"""LWM: vision-language stages from LWM-Text-1M, 1K to 1M tokens (the LWM paper's Table 13).

  python scripts/train.py --config configs/lwm_vision.py:1k --workdir workdirs/vision_1k \
      --config.data.path DATA_1K --config.init_from workdirs/text_1m
  python scripts/train.py --config configs/lwm_vision.py:8k --workdir workdirs/vision_8k \
      --config.data.path DATA_8K               # init_from defaults to workdirs/vision_1k
  ... 32k, 128k, 1m likewise.

Every stage: RoPE θ = 5e7, 8M tokens per batch, text and vision losses weighted 0.5 / 0.5; 1K and 8K
use a cosine schedule from 6e-4 to 6e-5, the longer stages a constant 8e-5 after warm-up.

Devices: the paper's TPU v4-1024 is 512 chips (v4 slice names count TensorCores, two per chip, and
JAX sees one device per chip); every stage validates on 512 devices. On 1024 the 128k and 1m stages
fail stage.validate (64 sequences over fsdp=128; 8 over fsdp=16): raise tp or sp instead.
"""
from lwm.stage import base_config

# 1K and 8K decay from 6e-4 to end_lr = 6e-5 (cosine); the longer stages stay at 8e-5 (constant).
# fsdp=-1 takes the devices tp and sp leave.
STAGES = {
    "1k": dict(seq_len=1024, steps=45000, warmup_steps=1000, lr=6e-4, lr_schedule="cosine",
               end_lr=6e-5, mesh="fsdp=-1"),
    "8k": dict(seq_len=8192, steps=14000, warmup_steps=500, lr=6e-4, lr_schedule="cosine",
               end_lr=6e-5, mesh="fsdp=-1"),
    "32k": dict(seq_len=32768, steps=1200, warmup_steps=100, lr=8e-5, lr_schedule="constant",
                end_lr=8e-5, mesh="tp=4,fsdp=-1"),
    "128k": dict(seq_len=131072, steps=450, warmup_steps=50, lr=8e-5, lr_schedule="constant",
                 end_lr=8e-5, mesh="tp=8,fsdp=-1"),
    "1m": dict(seq_len=1048576, steps=50, warmup_steps=5, lr=8e-5, lr_schedule="constant",
               end_lr=8e-5, mesh="tp=16,sp=4,fsdp=-1"),
}
BATCH_TOKENS = 8 * 2**20


def get_config(arg: str = "1k"):
  if arg not in STAGES:
    raise ValueError(f"configs/lwm_vision.py takes one of {list(STAGES)}, got {arg!r}")
  s = STAGES[arg]
  names = list(STAGES)
  c = base_config()
  c.model = "7b"
  c.seq_len, c.rope_theta, c.mesh = s["seq_len"], 5e7, s["mesh"]
  previous = names[names.index(arg) - 1]
  c.init_from = "workdirs/text_1m" if arg == "1k" else f"workdirs/vision_{previous}"
  c.train.steps, c.train.warmup_steps = s["steps"], s["warmup_steps"]
  c.train.batch_size = BATCH_TOKENS // s["seq_len"]
  c.train.lr, c.train.lr_schedule = s["lr"], s["lr_schedule"]
  c.train.end_lr_ratio = s["end_lr"] / s["lr"]
  c.checkpoint.every = 500 if s["steps"] > 1000 else 50
  return c
