"""LWM-Text: LLaMA-2-7B extended to 1M tokens in five stages (the LWM paper's Table 11), and the
same recipe from today's Hugging Face bases.

  python scripts/train.py --config configs/lwm_text.py:32k  --workdir workdirs/text_32k \
      --config.data.path DATA_32K --config.init_from checkpoints/llama-2-7b-hf
  python scripts/train.py --config configs/lwm_text.py:128k --workdir workdirs/text_128k \
      --config.data.path DATA_128K            # init_from defaults to workdirs/text_32k
  ... 256k, 512k, 1m likewise, each from the previous stage's workdir.

  python scripts/train.py --config configs/lwm_text.py:qwen25_7b/32k \
      --workdir workdirs/qwen25_7b_32k --config.init_from Qwen2.5-7B --config.data.path DATA_32K
  python scripts/train.py --config configs/lwm_text.py:llama31_8b/128k \
      --workdir workdirs/llama31_8b_128k --config.init_from Meta-Llama-3.1-8B ...

Every stage: 4M tokens per batch, constant learning rate 4e-5 after warm-up, RoPE θ growing with the
context; the mesh is the paper's, with fsdp taking the remaining devices (-1). The data
of each stage is a directory written by scripts/preprocess.py from documents of that stage's length
(for a Hugging Face base: with its tokenizer, `--tokenizer DIR`).

Bases other than the paper's (`BASE/STAGE`) start at the stage of their own context, where they keep
RoPE as shipped (`rope_theta` 0: the checkpoint's θ and scaling): Qwen2.5 ships θ 1e6 for 32K, the
paper's 32K θ; Llama 3.1 ships θ 5e5 with llama3 scaling for 128K and keeps that scaling as θ grows.
Tensor parallelism stops at the base's kv heads and the sequence axis takes the rest (tp=16 becomes
tp=4,sp=4 for Qwen2.5's 4 kv heads). These runs are the recipe applied, not trained by us.

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
# Hugging Face bases: the stage at their own context, and their kv heads (the largest tp).
BASES = {"qwen25_7b": ("32k", 4), "llama31_8b": ("128k", 8)}


def get_config(arg: str = "32k"):
  if "/" not in arg:
    return stage_config(STAGES, arg, COMMON, workdirs="workdirs/text_{stage}")
  base, stage = arg.split("/")
  if base not in BASES:
    raise ValueError(f"unknown base {base!r}; this config file has {list(BASES)}")
  first, kv_heads = BASES[base]
  names = list(STAGES)
  stages = {name: _on_base(STAGES[name], kv_heads, first=name == first)
            for name in names[names.index(first):]}
  return stage_config(stages, stage, {**COMMON, "model": "init_from"},
                      workdirs=f"workdirs/{base}_{{stage}}")


def _on_base(row: dict, kv_heads: int, first: bool) -> dict:
  """A paper stage for a base: its θ kept at its first stage, tp no larger than its kv heads."""
  sizes = dict(part.split("=") for part in row["mesh"].split(","))
  tp = int(sizes.get("tp", 1))
  sizes["tp"] = str(min(tp, kv_heads))
  sizes["sp"] = str(int(sizes.get("sp", 1)) * tp // int(sizes["tp"]))
  mesh = ",".join(f"{axis}={sizes[axis]}" for axis in ("tp", "sp", "fsdp"))
  return {**row, "mesh": mesh, **({"rope_theta": 0.0} if first else {})}
