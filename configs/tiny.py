"""Tiny CPU stages: stage1 (1K tokens, θ=1e4, fsdp=8) then stage2 (4K tokens, θ=1e5, sp=8, from
stage1).

  python scripts/preprocess.py ...  # or any dataset directory; then:
  python scripts/train.py --config configs/tiny.py:stage1 --workdir /tmp/tiny1 \
      --config.data.path DATA
  python scripts/train.py --config configs/tiny.py:stage2 --workdir /tmp/tiny2 \
      --config.data.path DATA \
      --config.init_from /tmp/tiny1

Both run in minutes on 8 simulated CPU devices (scripts/train.py simulates them when the mesh needs
more devices than the machine has).
"""
from lwm.stage_schema import stage_config

COMMON = {"model": "tiny", "train.batch_size": 8, "train.warmup_steps": 5, "train.log_every": 5,
          "train.dtype": "float32", "checkpoint.every": 10}
STAGES = {
    "stage1": {"seq_len": 1024, "rope_theta": 1e4, "mesh": "fsdp=8", "train.steps": 40,
               "train.lr": 3e-3},
    "stage2": {"seq_len": 4096, "rope_theta": 1e5, "mesh": "sp=8", "train.steps": 20,
               "train.lr": 1e-3},
}


def get_config(arg: str = "stage1"):
  return stage_config(STAGES, arg, COMMON)
