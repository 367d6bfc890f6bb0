"""The stage configs: the LWM recipe as the paper gives it, and CPU stages that pass training's own
checks. The reference figures below are copied from the LWM paper's Tables 11 and 13
(/work/shared/notes/lwm-reference.md), not computed from the configs."""
import json
import os

import pytest

from lwm import stage_schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# stage: (seq_len, rope_theta, steps, warmup, paper tokens, (dp, fsdp, tp, sp) on 256 devices:
# the paper's TPU v4-512 is 256 chips, one JAX device each)
LWM_TEXT = {
    "32k": (32768, 1e6, 1200, 100, 4.8e9, (1, 64, 4, 1, 1)),
    "128k": (131072, 1e7, 3000, 200, 12e9, (1, 32, 8, 1, 1)),
    "256k": (262144, 1e7, 3000, 200, 12e9, (1, 16, 16, 1, 1)),
    "512k": (524288, 2.5e7, 720, 50, 3e9, (1, 8, 16, 1, 2)),
    "1m": (1048576, 5e7, 450, 25, 1.8e9, (1, 4, 16, 1, 4)),
}
# stage: (seq_len, steps, warmup, peak lr, end lr, schedule, mesh on 512 devices: the paper's
# TPU v4-1024 is 512 chips). (The paper's
# token counts for these stages are not steps x 8M tokens: 107B for 8K's 14000 steps, for one.)
LWM_VISION = {
    "1k": (1024, 45000, 1000, 6e-4, 6e-5, "cosine", (1, 512, 1, 1, 1)),
    "8k": (8192, 14000, 500, 6e-4, 6e-5, "cosine", (1, 512, 1, 1, 1)),
    "32k": (32768, 1200, 100, 8e-5, 8e-5, "constant", (1, 128, 4, 1, 1)),
    "128k": (131072, 450, 50, 8e-5, 8e-5, "constant", (1, 64, 8, 1, 1)),
    "1m": (1048576, 50, 5, 8e-5, 8e-5, "constant", (1, 8, 16, 1, 4)),
}


def load(name, arg):
  return stage_schema.load_config(os.path.join(ROOT, "configs", f"{name}.py:{arg}"))


@pytest.mark.parametrize("arg", list(LWM_TEXT))
def test_lwm_text_stage_is_the_papers(arg):
  seq_len, theta, steps, warmup, tokens, mesh = LWM_TEXT[arg]
  c = load("lwm_text", arg)
  assert (c.seq_len, c.rope_theta, c.train.steps, c.train.warmup_steps) == (
      seq_len, theta, steps, warmup)
  assert c.seq_len * c.train.batch_size == 4 * 2**20  # 4M tokens per batch
  assert abs(c.train.steps * 4 * 2**20 / tokens - 1) < 0.06  # the paper rounds its token counts
  assert (c.train.lr, c.train.lr_schedule) == (4e-5, "constant")
  assert (c.train.text_loss_weight, c.train.vision_loss_weight) == (1.0, 0.0)
  assert stage_schema.mesh_sizes(c, 256) == mesh
  assert c.model == "7b"


def test_lwm_text_stages_chain():
  assert [load("lwm_text", a).init_from for a in LWM_TEXT] == [
      "", "workdirs/text_32k", "workdirs/text_128k", "workdirs/text_256k", "workdirs/text_512k"]


@pytest.mark.parametrize("arg", list(LWM_VISION))
def test_lwm_vision_stage_is_the_papers(arg):
  seq_len, steps, warmup, lr, end_lr, schedule, mesh = LWM_VISION[arg]
  c = load("lwm_vision", arg)
  assert (c.seq_len, c.rope_theta, c.train.steps, c.train.warmup_steps) == (
      seq_len, 5e7, steps, warmup)
  assert c.seq_len * c.train.batch_size == 8 * 2**20  # 8M tokens per batch
  assert (c.train.lr, c.train.lr_schedule) == (lr, schedule)
  assert c.train.lr * c.train.end_lr_ratio == pytest.approx(end_lr, rel=1e-12)
  assert stage_schema.mesh_sizes(c, 512) == mesh


def test_lwm_vision_stages_chain_from_text_1m():
  assert [load("lwm_vision", a).init_from for a in LWM_VISION] == [
      "workdirs/text_1m", "workdirs/vision_1k", "workdirs/vision_8k", "workdirs/vision_32k",
      "workdirs/vision_128k"]


@pytest.mark.parametrize("base, first, kv_heads",
                         [("qwen25_7b", "32k", 4), ("llama31_8b", "128k", 8)])
def test_hugging_face_bases_follow_the_paper_from_their_own_context(base, first, kv_heads):
  """A base keeps its shipped RoPE at its first stage, then takes the paper's θ; tp stops at its kv
  heads and sp takes the rest, so every stage still fits the paper's 256 devices."""
  args = list(LWM_TEXT)[list(LWM_TEXT).index(first):]
  for arg in args:
    c, paper = load("lwm_text", f"{base}/{arg}"), load("lwm_text", arg)
    dp, fsdp, tp, hp, sp = stage_schema.mesh_sizes(c, 256)
    assert c.rope_theta == (0.0 if arg == first else paper.rope_theta)
    assert tp == min(kv_heads, stage_schema.mesh_sizes(paper, 256)[2])
    assert tp * sp * fsdp == 256 and c.model == "init_from"
    assert (c.seq_len, c.train.steps, c.train.batch_size) == (
        paper.seq_len, paper.train.steps, paper.train.batch_size)
  assert [load("lwm_text", f"{base}/{a}").init_from for a in args] == [""] + [
      f"workdirs/{base}_{a}" for a in args[:-1]]
  with pytest.raises(ValueError, match="unknown stage"):
    load("lwm_text", f"{base}/16k")


def test_a_bases_first_stage_passes_trainings_checks_from_a_hugging_face_directory(dataset_dir):
  c = load("lwm_text", "qwen25_7b/32k")
  c.data.path = dataset_dir
  c.init_from = os.path.join(ROOT, "tests", "fixtures", "hf-tokenizers", "bytelevel-chatml")
  stage_schema.validate(c, num_devices=256)
  c.init_from = dataset_dir  # not a model: the model comes from init_from
  with pytest.raises(ValueError, match="config.init_from: .* holds vocab.json; expected"):
    stage_schema.validate(c, num_devices=256)


@pytest.fixture
def dataset_dir(tmp_path):
  with open(tmp_path / "vocab.json", "w") as f:
    json.dump({"text_vocab_size": 256}, f)
  return str(tmp_path)


@pytest.mark.parametrize("name, stages, devices", [
    ("lwm_text", LWM_TEXT, 256), ("lwm_vision", LWM_VISION, 512)])
def test_lwm_stages_pass_trainings_checks_on_the_papers_devices(dataset_dir, name, stages, devices):
  for arg in stages:
    c = load(name, arg)
    c.data.path, c.init_from = dataset_dir, ""
    stage_schema.validate(c, num_devices=devices)  # raises on any wrong value
  c = load("lwm_text", "128k")
  c.data.path, c.init_from = dataset_dir, ""
  stage_schema.validate(c, num_devices=512)  # 32 sequences on fsdp=64: rows replicated, warned


@pytest.mark.parametrize("name, arg, seq_len, theta, sizes", [
    ("tiny", "stage1", 1024, 1e4, (1, 8, 1, 1, 1)),
    ("tiny", "stage2", 4096, 1e5, (1, 1, 1, 1, 8)),
    ("quickstart", "stage1", 512, 1e4, (1, 1, 1, 1, 1)),
    ("quickstart", "stage2", 2048, 1e5, (1, 1, 1, 1, 8)),
    ("quickstart", "control", 2048, 1e5, (1, 1, 1, 1, 1)),
    ("quickstart", "generate", 512, 1e5, (1, 1, 1, 1, 1)),
])
def test_cpu_stages_pass_trainings_checks(dataset_dir, name, arg, seq_len, theta, sizes):
  c = load(name, arg)
  assert (c.seq_len, c.rope_theta, stage_schema.mesh_sizes(c)) == (seq_len, theta, sizes)
  c.data.path = dataset_dir
  # raises on any wrong value
  stage_schema.validate(c, num_devices=stage_schema.device_count_needed(c))


@pytest.mark.parametrize("name", ["tiny", "quickstart", "lwm_text", "lwm_vision"])
def test_unknown_stage_is_named(name):
  with pytest.raises(ValueError, match="unknown stage 'stage3'; this config file has"):
    load(name, "stage3")


def test_a_stage_table_sets_dotted_keys_and_chains_workdirs():
  stages = {"a": {"seq_len": 64, "train.steps": 3}, "b": {"seq_len": 128},
            "c": {"seq_len": 256, "init_from": "elsewhere"}}
  common = {"model": "tiny", "model_overrides.num_layers": 4}
  a, b, c = (stage_schema.stage_config(stages, k, common, workdirs="w/{stage}") for k in "abc")
  assert (a.seq_len, a.train.steps, a.init_from) == (64, 3, "")
  assert (b.seq_len, b.train.steps, b.init_from) == (128, 100, "w/a")  # 100: the schema's default
  assert c.init_from == "elsewhere"  # a row's own init_from wins over the chain
  assert a.model == "tiny" and a.model_overrides.num_layers == 4


@pytest.mark.parametrize("row, error", [({"train.stepz": 3}, KeyError),
                                        ({"train.steps": 2.5}, TypeError)])
def test_a_stage_table_refuses_unknown_keys_and_wrong_types(row, error):
  with pytest.raises(error, match="stepz|steps"):
    stage_schema.stage_config({"a": row}, "a")
