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
from lwm.stage import base_config

STAGES = {
    "stage1": dict(seq_len=1024, rope_theta=1e4, mesh="fsdp=8", steps=40, lr=3e-3),
    "stage2": dict(seq_len=4096, rope_theta=1e5, mesh="sp=8", steps=20, lr=1e-3),
}


def get_config(arg: str = "stage1"):
  if arg not in STAGES:
    raise ValueError(f"configs/tiny.py takes one of {sorted(STAGES)}, got {arg!r}")
  s = STAGES[arg]
  c = base_config()
  c.model = "tiny"
  c.seq_len, c.rope_theta, c.mesh = s["seq_len"], s["rope_theta"], s["mesh"]
  c.train.steps, c.train.lr, c.train.batch_size = s["steps"], s["lr"], 8
  c.train.warmup_steps, c.train.log_every, c.train.dtype = 5, 5, "float32"
  c.checkpoint.every = 10
  return c
