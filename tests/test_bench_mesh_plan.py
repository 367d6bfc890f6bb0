"""The mesh planner (lwm.bench.mesh_plan): enumeration, pruning with reasons, the choice, and
`plan_memory.py --mesh auto` end to end on the tiny model."""
import math
import os
import subprocess
import sys

import pytest

from lwm import mesh_spec
from lwm.bench import mesh_plan
from lwm.bench.mesh_plan import Row

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(num_heads=4, num_kv_heads=2, seq_len=1024, batch=1, blocks=(64, 64))


def sizes(**named):
  return tuple(named.get(axis, 1) for axis in mesh_spec.MESH_AXES)


def test_factorizations_are_every_ordered_split_of_the_device_count():
  found = mesh_plan.factorizations(8, 4)
  # 8 = 2^3 spread over 4 ordered factors: C(3 + 3, 3) ways.
  assert len(found) == len(set(found)) == math.comb(6, 3)
  assert all(math.prod(f) == 8 for f in found)


@pytest.mark.parametrize("mesh,why", [
    (dict(fsdp=2, sp=4), "batch 1 is not divisible by dp*fsdp = 2"),
    (dict(tp=8), "4 heads are not divisible by"),
    (dict(tp=4, sp=2), "2 kv heads are not divisible by tp = 4"),
])
def test_prune_names_the_constraint(mesh, why):
  assert why in mesh_plan.prune(sizes(**mesh), **TINY)


def test_prune_sequence_and_blocks():
  assert "not divisible into 2*sp = 16 chunks" in mesh_plan.prune(
      sizes(sp=8), **dict(TINY, seq_len=1000))
  assert "attention block 48 does not divide the 64-token zigzag chunks of sp = 8" in (
      mesh_plan.prune(sizes(sp=8), **dict(TINY, blocks=(48, 64))))
  assert mesh_plan.prune(sizes(sp=8), **TINY) == ""
  assert mesh_plan.prune(sizes(tp=2, sp=4), **TINY) == ""


def test_pruned_meshes_are_grouped_by_constraint():
  pruned = [(sizes(fsdp=2, sp=4), "batch 1 is not divisible by dp*fsdp = 2"),
            (sizes(tp=8), "4 heads are not divisible by tp = 8"),
            (sizes(fsdp=4, sp=2), "batch 1 is not divisible by dp*fsdp = 4")]
  assert mesh_plan.group_pruned(pruned) == [
      ("batch N is not divisible by dp*fsdp = N", ["fsdp=2,sp=4", "fsdp=4,sp=2"]),
      ("N heads are not divisible by tp = N", ["tp=8"])]


def test_a_head_parallel_axis_splits_heads_with_tp(monkeypatch):
  monkeypatch.setattr(mesh_spec, "MESH_AXES", ("dp", "fsdp", "tp", "hp", "sp"))
  with_hp = lambda **named: tuple(named.get(a, 1) for a in mesh_spec.MESH_AXES)
  assert "4 heads are not divisible by tp*hp = 8" in mesh_plan.prune(with_hp(tp=2, hp=4), **TINY)
  assert mesh_plan.prune(with_hp(hp=4, sp=2), **TINY) == ""  # kv heads are repeated over hp
  valid, _ = mesh_plan.candidates(8, **TINY)
  assert valid[:2] == [with_hp(sp=8), with_hp(hp=2, sp=4)]


def test_candidates_split_valid_from_pruned_longest_ring_first():
  valid, pruned = mesh_plan.candidates(8, **TINY)
  assert len(valid) + len(pruned) == len(mesh_plan.factorizations(8, len(mesh_spec.MESH_AXES)))
  assert valid[0] == sizes(sp=8) and sizes(tp=2, sp=4) in valid
  assert all(why for _, why in pruned)
  assert sizes(fsdp=2, sp=4) in [s for s, _ in pruned]


def row(mesh, peak, total, seconds=None):
  return Row(sizes(**mesh), peak_gib=peak, bytes_by_kind={"all-reduce": total},
             comm_seconds=seconds, fits=peak <= 10)


def test_choice_is_the_least_communication_that_fits():
  rows = [row(dict(sp=8), 9.0, 300.0), row(dict(tp=2, sp=4), 8.0, 200.0),
          row(dict(tp=4, sp=2), 12.0, 100.0)]  # least bytes, but over the budget
  choice, reason = mesh_plan.choose(rows, 10)
  assert choice.mesh == "tp=2,sp=4"
  assert reason.startswith("tp=2,sp=4: the least bytes sent") and "next sp=8" in reason


def test_ties_go_to_less_memory_and_seconds_rank_when_given():
  tie = [row(dict(sp=8), 9.0, 200.0), row(dict(tp=2, sp=4), 8.0, 200.0)]
  assert mesh_plan.choose(tie, 10)[0].mesh == "tp=2,sp=4"
  timed = [row(dict(sp=8), 9.0, 100.0, seconds=2.0), row(dict(tp=2, sp=4), 8.0, 200.0, seconds=1.0)]
  choice, reason = mesh_plan.choose(timed, 10)
  assert choice.mesh == "tp=2,sp=4" and "estimated communication time" in reason


def test_no_fit_names_the_smallest_and_failures_are_skipped():
  failed = Row(sizes(sp=8), error="XlaRuntimeError: boom")
  choice, reason = mesh_plan.choose([failed, row(dict(tp=2, sp=4), 12.0, 1.0)], 10)
  assert choice is None
  assert "no mesh fits 10 GiB per device; the smallest is tp=2,sp=4 at 12.00 GiB" in reason


@pytest.mark.slow
def test_plan_memory_mesh_auto_on_the_tiny_model():
  env = dict(os.environ, PYTHONPATH=ROOT)
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "plan_memory.py"), "--model", "tiny",
       "--seq-len", "512", "--devices", "8", "--mesh", "auto", "--topology", "4x900GBps,50GBps",
       "--max-candidates", "2"], capture_output=True, text=True, env=env, timeout=600, check=True)
  lines = out.stdout.splitlines()
  table = [line for line in lines if line.startswith(("sp=8 ", "tp=2,sp=4 "))]
  assert len(table) == 2 and all(line.endswith("yes") for line in table), out.stdout
  # Both compiled meshes ring over sp and all-gather/reduce parameters: bytes in every row.
  assert all(float(line.split()[-3].replace(",", "")) > 0 for line in table)
  choice = [line for line in lines if line.startswith("choice: ")]
  assert choice and "the least estimated communication time" in choice[0], out.stdout
  assert "batch N is not divisible by dp*fsdp = N: fsdp=2,sp=4 and" in out.stdout


def auto_stage():
  from lwm import stage_schema
  c = stage_schema.base_config()
  c.model, c.seq_len, c.mesh = "tiny", 256, "auto"
  c.train.batch_size, c.train.grad_accum = 1, 1
  return c


def test_auto_mesh_has_no_sizes_before_the_stage_starts(monkeypatch):
  from lwm import launch, stage_schema
  with pytest.raises(ValueError, match="config.mesh='auto' is the planner's choice"):
    stage_schema.mesh_sizes(auto_stage())
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
  launch.setup_devices(auto_stage())  # leaves the devices there are
  assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=3"


@pytest.mark.slow
def test_resolve_auto_mesh_picks_a_valid_mesh_and_logs_it():
  import jax
  logged = []
  resolved = mesh_plan.resolve_auto_mesh(auto_stage(), jax.device_count(),
                                         log=lambda fmt, *a: logged.append(fmt % a))
  assert resolved.mesh in ("sp=8", "tp=2,sp=4")
  assert logged and logged[0].startswith(f"mesh auto -> {resolved.mesh}")


@pytest.mark.slow
def test_a_stage_with_mesh_auto_trains_on_the_planners_choice(tmp_path):
  import json
  import training_data
  from lwm import train
  c = auto_stage()
  c.data.path = training_data.make_text_dataset(str(tmp_path / "text"))
  c.train.steps, c.train.log_every, c.train.dtype = 1, 1, "float32"
  c.checkpoint.every, c.checkpoint.async_save = 1, False
  train.train(c, str(tmp_path / "run"))
  with open(tmp_path / "run" / "config.json") as f:
    assert json.load(f)["mesh"] in ("sp=8", "tp=2,sp=4")
