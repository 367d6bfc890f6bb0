"""LWM-Text: LLaMA-2-7B extended to 1M tokens in five stages (the LWM paper's Table 11).

  python scripts/train.py --config configs/lwm_text.py:32k  --workdir workdirs/text_32k \
      --config.data.path DATA_32K --config.init_from checkpoints/llama-2-7b-hf
  python scripts/train.py --config configs/lwm_text.py:128k --workdir workdirs/text_128k \
      --config.data.path DATA_128K            # init_from defaults to workdirs/text_32k
  ... 256k, 512k, 1m likewise, each from the previous stage's workdir.

Every stage: 4M tokens per batch, constant learning rate 4e-5 after warm-up, RoPE θ growing with the
context; the mesh is the paper's, with fsdp taking the remaining devices (-1). The data
of each stage is a directory written by scripts/preprocess.py from documents of that stage's length.

Devices: the paper's TPU v4-512 is 256 chips (v4 slice names count TensorCores, two per chip, and
JAX sees one device per chip), so every stage validates on 256 devices: fsdp = 64/32/16/8/4 for
batches of 128/32/16/8/4 sequences (from 128k on, one sequence per fsdp row). On more devices
the long stages fail validation (the batch is split over dp*fsdp rows, e.g. 32 sequences
over fsdp=64 on 512 devices): raise tp or sp (--config.mesh tp=8,sp=2,fsdp=-1) or use 256.
"""
from lwm.stage_schema import stage_config

# Paper: TPU v4-512 (256 devices), fp32; we keep bf16 activations. Batches are 4M tokens.
COMMON = {"model": "7b", "train.lr": 4e-5, "train.lr_schedule": "constant",
          "train.text_loss_weight": 1.0, "train.vision_loss_weight": 0.0, "checkpoint.every": 100}
STAGES = {
    "32k": {"seq_len": 32768, "rope_theta": 1e6, "train.steps": 1200, "train.warmup_steps": 100,
            "train.batch_size": 128, "mesh": "tp=4,fsdp=-1"},
    "128k": {"seq_len": 131072, "rope_theta": 1e7, "train.steps": 3000, "train.warmup_steps": 200,
             "train.batch_size": 32, "mesh": "tp=8,fsdp=-1"},
    "256k": {"seq_len": 262144, "rope_theta": 1e7, "train.steps": 3000, "train.warmup_steps": 200,
             "train.batch_size": 16, "mesh": "tp=16,fsdp=-1"},
    "512k": {"seq_len": 524288, "rope_theta": 2.5e7, "train.steps": 720, "train.warmup_steps": 50,
             "train.batch_size": 8, "mesh": "tp=16,sp=2,fsdp=-1"},
    "1m": {"seq_len": 1048576, "rope_theta": 5e7, "train.steps": 450, "train.warmup_steps": 25,
           "train.batch_size": 4, "mesh": "tp=16,sp=4,fsdp=-1"},
}


def get_config(arg: str = "32k"):
  return stage_config(STAGES, arg, COMMON, workdirs="workdirs/text_{stage}")
