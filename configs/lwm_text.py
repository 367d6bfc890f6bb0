"""LWM-Text: LLaMA-2-7B extended to 1M tokens in five stages (the LWM paper's Table 11).

  python scripts/train.py --config configs/lwm_text.py:32k  --workdir workdirs/text_32k \
      --config.data.path DATA_32K --config.init_from checkpoints/llama-2-7b-hf
  python scripts/train.py --config configs/lwm_text.py:128k --workdir workdirs/text_128k \
      --config.data.path DATA_128K            # init_from defaults to workdirs/text_32k
  ... 256k, 512k, 1m likewise, each from the previous stage's workdir.

Every stage: 4M tokens per batch, constant learning rate 4e-5 after warm-up, RoPE θ growing with the
context; the mesh is the paper's dp,fsdp,tp,sp with fsdp taking the remaining devices (-1). The data
of each stage is a directory written by scripts/preprocess.py from documents of that stage's length.
"""
from lwm.stage import base_config

# seq_len, rope_theta, steps, warmup, mesh (paper: TPU v4-512, fp32; we keep bf16 activations).
STAGES = {
    "32k": (32768, 1e6, 1200, 100, "1,-1,4,1"),
    "128k": (131072, 1e7, 3000, 200, "1,-1,8,1"),
    "256k": (262144, 1e7, 3000, 200, "1,-1,16,1"),
    "512k": (524288, 2.5e7, 720, 50, "1,-1,16,2"),
    "1m": (1048576, 5e7, 450, 25, "1,-1,16,4"),
}
BATCH_TOKENS = 4 * 2**20


def get_config(arg: str = "32k"):
  if arg not in STAGES:
    raise ValueError(f"configs/lwm_text.py takes one of {list(STAGES)}, got {arg!r}")
  seq_len, theta, steps, warmup, mesh = STAGES[arg]
  names = list(STAGES)
  c = base_config()
  c.model = "7b"
  c.seq_len, c.rope_theta, c.mesh = seq_len, theta, mesh
  c.init_from = "" if arg == "32k" else f"workdirs/text_{names[names.index(arg) - 1]}"
  c.train.steps, c.train.warmup_steps = steps, warmup
  c.train.batch_size = BATCH_TOKENS // seq_len
  c.train.lr, c.train.lr_schedule = 4e-5, "constant"
  c.train.text_loss_weight, c.train.vision_loss_weight = 1.0, 0.0
  c.checkpoint.every = 100
  return c
