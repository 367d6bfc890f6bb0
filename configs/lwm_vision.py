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
fail validation (64 sequences over fsdp=128; 8 over fsdp=16): raise tp or sp instead.
"""
from lwm.stage_schema import stage_config

# Batches are 8M tokens; fsdp=-1 takes the devices tp and sp leave.
COMMON = {"model": "7b", "rope_theta": 5e7, "init_from": "workdirs/text_1m"}
COSINE = {"train.lr": 6e-4, "train.lr_schedule": "cosine", "train.end_lr_ratio": 0.1}  # to 6e-5
CONSTANT = {"train.lr": 8e-5, "train.lr_schedule": "constant", "train.end_lr_ratio": 1.0}
STAGES = {
    "1k": {"seq_len": 1024, "train.steps": 45000, "train.warmup_steps": 1000,
           "train.batch_size": 8192, "mesh": "fsdp=-1", "checkpoint.every": 500, **COSINE},
    "8k": {"seq_len": 8192, "train.steps": 14000, "train.warmup_steps": 500,
           "train.batch_size": 1024, "mesh": "fsdp=-1", "checkpoint.every": 500, **COSINE},
    "32k": {"seq_len": 32768, "train.steps": 1200, "train.warmup_steps": 100,
            "train.batch_size": 256, "mesh": "tp=4,fsdp=-1", "checkpoint.every": 500, **CONSTANT},
    "128k": {"seq_len": 131072, "train.steps": 450, "train.warmup_steps": 50,
             "train.batch_size": 64, "mesh": "tp=8,fsdp=-1", "checkpoint.every": 50, **CONSTANT},
    "1m": {"seq_len": 1048576, "train.steps": 50, "train.warmup_steps": 5,
           "train.batch_size": 8, "mesh": "tp=16,sp=4,fsdp=-1", "checkpoint.every": 50,
           **CONSTANT},
}


def get_config(arg: str = "1k"):
  return stage_config(STAGES, arg, COMMON, workdirs="workdirs/vision_{stage}")
