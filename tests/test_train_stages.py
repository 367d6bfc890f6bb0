"""Staged training in-process: bad configs fail before compiling, stages chain, NaN stops the run,
held-out evaluation and profiles happen at the steps asked for."""
import glob
import os
import re

import jax
import numpy as np
import pytest
from flax import nnx

import training_data
from lwm import checkpoint, model_dir, stage_schema, train
from lwm.data.dataset import read_vocab
from lwm.data.loader import Loader
from lwm.metrics import read_metrics
from lwm.model import loss_fn
from lwm.model.step import abstract_model


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return training_data.make_text_dataset(str(tmp_path_factory.mktemp("text")))


def tiny_config(data_path, **changes):
  c = stage_schema.base_config()
  c.model, c.seq_len, c.rope_theta, c.mesh = "tiny", 256, 1e4, "1,8,1,1"
  c.data.path = data_path
  c.train.steps, c.train.batch_size, c.train.lr, c.train.warmup_steps = 4, 8, 3e-3, 1
  c.train.log_every, c.train.dtype = 1, "float32"
  c.checkpoint.every, c.checkpoint.async_save = 2, False
  for key, value in changes.items():
    target = c
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return c


@pytest.mark.parametrize("changes, message", [
    ({"mesh": "1,4,1,1"}, r"needs 4 devices, but there are 8"),
    ({"mesh": "1,1,1,8", "seq_len": 200}, r"seq_len=200 must be a positive multiple of 2\*sp\*hp"),
    ({"mesh": "hp=2,sp=4", "seq_len": 264}, r"seq_len=264 must be a positive multiple of 2\*sp\*hp "
                                            r"= 16"),
    ({"mesh": "hp=8"}, r"hp=8 must divide the 4 query heads a device holds \(heads=4 / tp=1\): the "
                       r"all-to-all gives each hp device a slice of them; use hp=4,sp=2 instead"),
    ({"mesh": "tp=4,sp=2"}, r"tp=4 must divide heads=4 and kv_heads=2: tensor parallelism gives "
                            r"each device whole heads; use tp among \[1, 2\]"),
    ({"data.path": "/nonexistent/data"}, r"data.path='/nonexistent/data' is not a directory"),
    ({"mesh": "1,1,1,8", "seq_len": 400}, r"attention_block_q=8 does not divide"),
])
def test_bad_configs_fail_before_compiling(dataset, tmp_path, changes, message):
  config = tiny_config(dataset, **changes)
  with pytest.raises(ValueError, match=message):
    train.train(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_batch_smaller_than_fsdp_trains(dataset, tmp_path, caplog):
  """LWM issue 39: a micro-batch of 4 rows on fsdp=8 goes over no batch axis (4 does not divide
  by 8) and is said so once; fsdp still shards the parameters and the run trains."""
  config = tiny_config(dataset, **{"train.batch_size": 4, "train.steps": 2})
  with caplog.at_level("WARNING"):
    metrics = train.train(config, str(tmp_path / "run"))
  assert np.isfinite(metrics["loss"])
  assert "micro-batch of 4 rows is split over no axis" in caplog.text


def test_stage2_starts_from_stage1_parameters_on_another_mesh(dataset, tmp_path):
  stage1 = tiny_config(dataset)
  train.train(stage1, str(tmp_path / "stage1"))
  stage2 = tiny_config(dataset, mesh="1,1,1,8", seq_len=512, rope_theta=1e5,
                       init_from=str(tmp_path / "stage1"), **{"train.steps": 1})
  train.train(stage2, str(tmp_path / "stage2"))
  first_loss = read_metrics(str(tmp_path / "stage2"))[0]["loss"]

  # Independently: stage 1's final parameters, stage 2's settings and first batch, one device.
  vocab = read_vocab(dataset)
  cfg = model_dir.model_config(stage2, vocab)
  graphdef, abstract = nnx.split(abstract_model(cfg), nnx.Param)
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one_device),
                          abstract)
  params, step = checkpoint.restore_params(str(tmp_path / "stage1"), abstract)
  assert step == 4
  batch = next(Loader(dataset, 512, 8, seed=stage2.seed))  # natural order, NumPy
  want, _ = loss_fn(nnx.merge(graphdef, params), batch)
  np.testing.assert_allclose(first_loss, float(want), rtol=1e-5)


def test_init_from_with_other_shapes_names_the_parameter(dataset, tmp_path):
  train.train(tiny_config(dataset, **{"train.steps": 2}), str(tmp_path / "stage1"))
  wider = tiny_config(dataset, init_from=str(tmp_path / "stage1"))
  wider.model_overrides = {"intermediate_size": 256}
  with pytest.raises(ValueError, match=r"parameter layers\.w_\w+ has shape \(2, \d+, \d+\) "):
    train.train(wider, str(tmp_path / "stage2"))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(dataset, tmp_path):
  # Warm-up from lr 0: step 1 is finite and unchanged, then lr ~1e30 blows the parameters up.
  config = tiny_config(dataset, **{"train.lr": 1e30, "train.warmup_steps": 2,
                                   "train.lr_schedule": "constant", "train.steps": 8,
                                   "checkpoint.every": 1})
  with pytest.raises(train.NonFiniteLoss) as error:
    train.train(config, str(tmp_path / "run"))
  # Either a step's loss is NaN, or a step with a finite loss left non-finite parameters (its
  # checkpoint is then refused, so the loss of the step after never had to show it).
  found = re.search(r"(loss is nan at step|parameters are not finite after step) (\d+)",
                    str(error.value))
  assert found, str(error.value)
  bad_step = int(found.group(2))
  assert 1 < bad_step <= 8
  workdir = str(tmp_path / "run")
  assert checkpoint.latest_step(workdir) == bad_step - 1
  logged = bad_step - 1 if found.group(1).startswith("loss") else bad_step
  assert [m["step"] for m in read_metrics(workdir)] == list(range(1, logged + 1))
  saved = checkpoint.ocp.StandardCheckpointer().restore(
      str(tmp_path / "run" / "checkpoints" / str(bad_step - 1) / "params"))
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(saved))


def test_gradient_accumulation_takes_one_update_per_step(dataset, tmp_path):
  config = tiny_config(dataset, **{"train.grad_accum": 2, "train.batch_size": 16,
                                   "train.steps": 2})
  train.train(config, str(tmp_path / "run"))
  assert [m["step"] for m in read_metrics(str(tmp_path / "run"))] == [1, 2]
  mngr = checkpoint.manager(str(tmp_path / "run"))
  data_state = mngr.restore(2, args=checkpoint.ocp.args.Composite(
      data=checkpoint.ocp.args.JsonRestore())).data
  mngr.close()
  # Two optimizer steps of two micro-batches of 8 rows of 256 tokens: the loader packed 4 batches.
  assert data_state["tokens"] + data_state["padding"] == 4 * 8 * 256, data_state


def test_gradient_accumulation_applies_one_adamw_update_of_the_mean_gradient():
  """With grad_accum=2, micro-batch gradients g1..g4 give exactly two AdamW updates, of the clipped
  means (g1+g2)/2 and (g3+g4)/2, and the parameters do not move between them. Reference: AdamW
  written out in float64 NumPy."""
  import optax
  c = stage_schema.base_config()
  t = c.train
  t.grad_accum, t.lr, t.lr_schedule, t.warmup_steps, t.steps = 2, 0.1, "constant", 1, 10
  t.weight_decay, t.b1, t.b2, t.clip_norm = 0.1, 0.9, 0.95, 1.0
  rng = np.random.default_rng(0)
  p0 = rng.normal(size=5)
  grads = [rng.normal(size=5) * s for s in (0.1, 0.3, 2.0, 0.5)]  # the third one gets clipped
  tx = train.optimizer(t)
  params = jax.numpy.asarray(p0, jax.numpy.float32)
  state = tx.init(params)
  seen = []
  for g in grads:
    updates, state = tx.update(jax.numpy.asarray(g, jax.numpy.float32), state, params)
    params = optax.apply_updates(params, updates)
    seen.append(np.asarray(params, np.float64))

  def clipped(g):
    return g * min(1.0, t.clip_norm / np.linalg.norm(g))
  m = v = np.zeros(5)
  p = p0.copy()
  for k, g in enumerate([clipped((grads[0] + grads[1]) / 2), clipped((grads[2] + grads[3]) / 2)]):
    m, v = t.b1 * m + (1 - t.b1) * g, t.b2 * v + (1 - t.b2) * g * g
    m_hat, v_hat = m / (1 - t.b1 ** (k + 1)), v / (1 - t.b2 ** (k + 1))
    lr = 0.0 if k == 0 else t.lr  # the warm-up starts at 0
    p = p - lr * (m_hat / (np.sqrt(v_hat) + 1e-8) + t.weight_decay * p)
  np.testing.assert_array_equal(seen[2], seen[1])  # a micro-step: no update in between
  np.testing.assert_allclose(seen[3], p, rtol=1e-5, atol=1e-6)
  assert np.abs(seen[3] - p0).max() > 0.05  # the update is not a no-op


# ---------------------------------------------------------------- Evaluation and profiles

@pytest.fixture(scope="module")
def evaluated_run(dataset, tmp_path_factory):
  """4 steps with a held-out evaluation every 2 steps and a profile of steps 2-3."""
  root = tmp_path_factory.mktemp("evaluated")
  tokenizer = os.path.join(os.path.dirname(dataset), "tok.model")
  held_out = training_data.make_text_dataset(str(root / "held_out"), num_docs=16, seed=1,
                                             tokenizer=tokenizer)
  config = tiny_config(dataset, **{"eval.every": 2, "eval.data_path": held_out,
                                   "eval.batches": 2, "train.profile_steps": "2,3",
                                   "checkpoint.keep": 5})
  train.train(config, str(root / "run"))
  return config, str(root / "run")


def test_eval_loss_is_the_models_loss_on_the_held_out_batches(evaluated_run):
  config, workdir = evaluated_run
  evals = {m["step"]: m["eval_loss"] for m in read_metrics(workdir) if "eval_loss" in m}
  assert sorted(evals) == [2, 4]
  # Independently: the checkpoint of that step, one device, the held-out data in natural order.
  cfg = model_dir.model_config(config, read_vocab(config.data.path))
  graphdef, abstract = nnx.split(abstract_model(cfg), nnx.Param)
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one_device),
                          abstract)
  for step, got in evals.items():
    path = os.path.join(workdir, "checkpoints", str(step), "params")
    model = nnx.merge(graphdef, checkpoint.ocp.StandardCheckpointer().restore(path, abstract))
    loader = Loader(config.eval.data_path, config.seq_len, 8, seed=config.seed)  # NumPy batches
    want = np.mean([float(loss_fn(model, next(loader))[0]) for _ in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_profile_steps_write_a_trace_into_the_workdir(evaluated_run):
  _, workdir = evaluated_run
  traces = os.path.join(workdir, "profile", "plugins", "profile", "*")
  assert glob.glob(os.path.join(traces, "*.xplane.pb"))  # TensorBoard profile plugin
  assert not glob.glob(os.path.join(traces, "perfetto_trace.json.gz"))  # only when asked


@pytest.mark.parametrize("changes, message", [
    ({"eval.every": 2}, r"needs config.eval.data_path"),
    ({"train.profile_steps": "5"}, r"profile_steps='5' must be 'START,END'"),
    ({"data.prefetch": -1}, r"data.prefetch=-1 must be >= 0"),
])
def test_bad_loop_settings_are_refused(dataset, changes, message):
  with pytest.raises(ValueError, match=message):
    stage_schema.validate(tiny_config(dataset, **changes), 8)
