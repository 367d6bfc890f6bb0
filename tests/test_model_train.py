"""Named sizes have the right shapes (without allocating), and `tiny` learns on the CPU."""
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import model_testing
from lwm import sharding as shd
from lwm.model import (CONFIGS, abstract_model, adamw, count_params, create_sharded, from_hf_llama,
                       get_config, init_optimizer, jit_train_step, lower_train_step)

LLAMA2_7B_PARAMS = 6_738_415_616


def text_params(state) -> int:
  return count_params(state) - sum(
      count_params(state[k]) for k in ("embed_vision", "head_vision") if k in state)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_named_size_shapes(name):
  config = get_config(name)
  state = nnx.state(abstract_model(config), nnx.Param)
  hd, layers = config.dim_per_head, config.num_layers
  assert state["layers"]["wq"].shape == (layers, config.hidden_size, config.num_heads * hd)
  assert state["layers"]["wk"].shape == (layers, config.hidden_size, config.num_kv_heads * hd)
  assert state["embed_vision"].shape == (config.vision_vocab_size, config.hidden_size)
  assert state["head_text"].shape == (config.hidden_size, config.vocab_size)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(state))


def test_7b_text_parameters_are_llama2_7b():
  state = nnx.state(abstract_model(get_config("7b")), nnx.Param)
  assert text_params(state) == LLAMA2_7B_PARAMS
  assert count_params(state) - LLAMA2_7B_PARAMS == 2 * 8448 * 4096


def test_parameters_are_sharded_over_fsdp_and_sp():
  mesh = shd.make_mesh(1, 2, 2, 2)
  state = nnx.state(abstract_model(get_config("7b"), mesh), nnx.Param)
  specs = shd.param_shardings(state, mesh)
  assert specs["layers"]["wq"].get_value().spec == P(None, ("fsdp", "sp"), "tp")
  assert specs["layers"]["w_down"].get_value().spec == P(None, "tp", ("fsdp", "sp"))
  assert specs["embed_text"].get_value().spec == P("tp", ("fsdp", "sp"))
  assert specs["final_norm"].get_value().spec == P(None)


@pytest.mark.parametrize("mesh_sizes", [(1, 1, 1, 1), (1, 2, 1, 4)])
def test_tiny_loss_goes_down(mesh_sizes):
  config = get_config("tiny")
  mesh = shd.make_mesh(*mesh_sizes)
  tx = adamw(3e-3, weight_decay=0.0)
  graphdef, params, opt_state = create_sharded(config, mesh, tx)
  step = jit_train_step(graphdef, tx, params, mesh, batch_size=2)
  batch_np = model_testing.packed_batch(config, 2, 32)
  batch = jax.device_put(model_testing.to_layout(batch_np, mesh.shape["sp"]),
                         shd.batch_shardings(mesh, 2, batch_np.keys()))
  losses = []
  for _ in range(6):
    params, opt_state, metrics = step(params, opt_state, batch)
    losses.append(float(metrics["loss"]))
  assert all(np.isfinite(losses)), losses
  assert losses[-1] < losses[0] - 0.1, losses
  assert params["layers"]["wq"][...].sharding == shd.param_shardings(
      nnx.state(abstract_model(config, mesh), nnx.Param), mesh)["layers"]["wq"].get_value()


@pytest.mark.parametrize("flags", [
    ["--model", "tiny", "--seq-len", "512", "--batch", "2", "--mesh", "1,2,1,2"],
    ["--mode", "prefill", "--model", "tiny", "--seq-len", "512", "--mesh", "1,1,2,4"],
    ["--config", os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.py") + ":stage2"],
])
def test_plan_memory_script_reports_peak(flags):
  script = os.path.join(os.path.dirname(__file__), "..", "scripts", "plan_memory.py")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, script, *flags], capture_output=True, text=True, env=env,
                       check=True, timeout=300).stdout
  assert "arguments per device" in out and "temp per device" in out
  last = out.strip().splitlines()[-1]
  assert re.fullmatch(r"peak per device: \d+\.\d+ GiB", last), last


def test_hf_checkpoint_trains_on_a_mesh(tmp_path):
  from tests.test_model_hf import HF_CONFIG, random_checkpoint
  random_checkpoint(str(tmp_path), shard=False)
  mesh = shd.make_mesh(1, 2, 2, 2)
  model = from_hf_llama(str(tmp_path), mesh=mesh, vision_vocab_size=32, ffn_chunk=4, loss_chunk=4)
  graphdef, params = nnx.split(model, nnx.Param)
  tx = adamw(1e-3)
  step = jit_train_step(graphdef, tx, params, mesh, batch_size=2)
  config = model.config
  batch = model_testing.to_layout(model_testing.packed_batch(config, 2, 32), mesh.shape["sp"])
  _, _, metrics = step(params, init_optimizer(tx, params, mesh), batch)
  assert np.isfinite(float(metrics["loss"])) and config.vocab_size == HF_CONFIG["vocab_size"]


def test_train_step_memory_does_not_grow_with_attention_tiles():
  # Regression: jax.grad of the layer scan once hoisted the ring's masks out of the loop as
  # residuals stacked over ring steps x tiles x tiles (about 5 GiB here instead of 0.3 GiB).
  compiled = lower_train_step(get_config("small", num_layers=2), shd.make_mesh(1, 1, 1, 8),
                              1, 32768).compile()
  assert compiled.memory_analysis().temp_size_in_bytes < 1.5 * 1024**3
