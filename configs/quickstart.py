"""The quickstart's stages (CPU, minutes): a small model learns needle retrieval at 512 tokens, then
extends to 2048 tokens with a larger θ, sharded over 8 simulated devices with ring attention.

  python scripts/train.py --config configs/quickstart.py:stage1 --workdir out/stage1 \
      --config.data.path out/data_short
  python scripts/train.py --config configs/quickstart.py:stage2 --workdir out/stage2 \
      --config.data.path out/data_long --config.init_from out/stage1
  python scripts/train.py --config configs/quickstart.py:control --workdir out/control \
      --config.data.path out/data_long   # the untrained control: initial parameters, saved
  python scripts/train.py --config configs/quickstart.py:generate --workdir out/generate \
      --config.data.path out/data_generate --config.init_from out/stage2

`bash scripts/quickstart.sh` runs these (and everything around them); see docs/quickstart.md.
Stage 1 runs on one device (fastest on a small CPU) and learns both retrievals on examples of up to
512 tokens (text alone reaches 1.0 held-out at 512 tokens in ~600 steps; reading video digits is
slower); stage 2 stretches them to 4x the context on mesh sp=8 with long examples only. The
generate stage is a short fine-tune of stage 2 on text -> video pairs (the vision loss on) that
teaches drawing the numbers it has learnt to read.
"""
from lwm.stage_schema import stage_config

# Two layers are enough to find the one number in a context and copy it; width 128 and a large
# learning rate learn it within the CPU budget. No remat: activations are small. Only text follows
# a video, so the vision loss is off.
COMMON = {"model": "tiny", "train.log_every": 25, "train.dtype": "float32",
          "train.text_loss_weight": 1.0, "train.vision_loss_weight": 0.0,
          "checkpoint.every": 250, "checkpoint.async_save": False,
          **{f"model_overrides.{k}": v for k, v in dict(
              hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4, num_kv_heads=4,
              initializer_range=0.05, attention_block_q=128, attention_block_kv=128,
              ffn_chunk=512, loss_chunk=512, remat_policy="none").items()}}
STAGES = {
    "stage1": {"seq_len": 512, "rope_theta": 1e4, "mesh": "sp=1", "train.steps": 2000,
               "train.lr": 3e-3, "train.batch_size": 16, "train.warmup_steps": 50},
    "stage2": {"seq_len": 2048, "rope_theta": 1e5, "mesh": "sp=8", "train.steps": 600,
               "train.lr": 1e-3, "train.batch_size": 4, "train.warmup_steps": 10},
    # The control: stage 2's model at its initial parameters (lr 0, one step saves them).
    # Text -> image and text -> video of every training number (short examples, so 512 tokens):
    # only the frames are targets, so the vision loss is on.
    "generate": {"seq_len": 512, "rope_theta": 1e5, "mesh": "sp=1", "train.steps": 300,
                 "train.lr": 1e-3, "train.batch_size": 8, "train.warmup_steps": 10,
                 "train.vision_loss_weight": 1.0},
    "control": {"seq_len": 2048, "rope_theta": 1e5, "mesh": "sp=1", "train.steps": 1,
                "train.lr": 0.0, "train.batch_size": 1, "train.warmup_steps": 0},
}


def get_config(arg: str = "stage1"):
  return stage_config(STAGES, arg, COMMON)
