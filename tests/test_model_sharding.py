"""The rules table is the one place that maps logical axes to mesh axes; any mesh is accepted."""
import jax
import jax.extend
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

import model_testing
from lwm import mesh_spec
from lwm import sharding as shd
from lwm.eval import inference
from lwm.model import Transformer, from_hf_llama, get_config, loss_fn, to_hf_llama


def tiny_params():
  config = get_config("tiny")
  _, params = nnx.split(Transformer(config, rngs=nnx.Rngs(0)), nnx.Param)
  return config, params


def place(config, params, mesh):
  """The model on `mesh` with `params` (made on the host)."""
  graphdef, abstract = nnx.split(
      nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0), mesh=mesh)), nnx.Param)
  return nnx.merge(graphdef, jax.device_put(params, shd.param_shardings(abstract, mesh)))


def loss_of(model, batch_np):
  batch = model_testing.to_layout(batch_np, shd.ring_shards(model.get_mesh()))
  if model.mesh is not None:
    batch = jax.device_put(batch, shd.batch_shardings(model.mesh, 2, batch.keys()))
  graphdef, params = nnx.split(model, nnx.Param)
  run = lambda p, b: loss_fn(nnx.merge(graphdef, p), b)[0]
  return float(jax.jit(run)(params, batch)), jax.make_jaxpr(run)(params, batch)


def shard_map_specs(jaxpr) -> list:
  """The in and out specs of every shard_map in a jaxpr, nested ones included."""
  specs = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "shard_map":
      specs.append((eqn.params["in_specs"], eqn.params["out_specs"]))
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      specs += shard_map_specs(sub)
  return specs


def test_changing_the_seq_rule_moves_every_place(monkeypatch):
  """Sequence on a mesh axis named `cp` (there is no `sp` at all): the training loss, prefill and
  cached decode still equal one device's, and every shard_map shards over `cp`."""
  config, params = tiny_params()
  batch_np = model_testing.packed_batch(config, batch=2, seq=32)
  reference_loss, _ = loss_of(Transformer(config, rngs=nnx.Rngs(0)), batch_np)
  rules = tuple((name, {("sp", "hp"): ("cp", "hp"), ("fsdp", "sp"): ("fsdp", "cp")}.get(axes, axes))
                for name, axes in shd.LOGICAL_RULES)
  monkeypatch.setattr(shd, "LOGICAL_RULES", rules)
  mesh = jax.make_mesh((2, 4), ("fsdp", "cp"))  # jax's default axis types, not ours
  model = place(config, params, mesh)
  assert "sp" not in model.get_mesh().axis_names and shd.seq_shards(model.get_mesh()) == 4

  loss, jaxpr = loss_of(model, batch_np)
  assert abs(loss - reference_loss) <= 1e-5 * abs(reference_loss)
  specs = shard_map_specs(jaxpr.jaxpr)
  assert len(specs) >= 2  # ring attention (per layer, inside the scan) and the loss
  for in_specs, _ in specs:
    assert any("cp" in shd.spec_axes(s) for s in in_specs), in_specs
    assert not any("sp" in shd.spec_axes(s) for s in in_specs), in_specs

  tokens = model_testing.packed_batch(config, batch=1, seq=21, seed=1)["tokens"][0]
  gen = inference.Generator(model)
  padded = np.zeros((1, inference.padded_length(21, 4)), np.int32)
  padded[0, :21] = tokens
  logits, cache = gen.prefill(padded, np.zeros_like(padded, bool), [21], 2)
  assert cache.prompt_k.sharding.spec[2] == "cp"
  logits, _ = gen.decode(cache, np.asarray([7], np.int32), 0)
  full = Transformer(config, rngs=nnx.Rngs(0))(np.concatenate([tokens, [7]])[None])
  np.testing.assert_allclose(np.asarray(logits)[0], np.asarray(full)[0, -1], rtol=1e-5, atol=1e-5)


def test_batch_shardings_follow_the_rules(monkeypatch):
  mesh = shd.make_mesh(1, 2, 1, 4)
  assert shd.batch_shardings(mesh, 4, ["tokens"])["tokens"].spec == P("fsdp", "sp")
  monkeypatch.setattr(shd, "LOGICAL_RULES", tuple(
      (name, "fsdp" if name == "seq" else ("sp" if name == "batch" else axes))
      for name, axes in shd.LOGICAL_RULES))
  assert shd.batch_shardings(mesh, 4, ["tokens"])["tokens"].spec == P("sp", "fsdp")
  assert shd.ring_axis() == "fsdp" and shd.seq_shards(mesh) == 2


def test_model_mesh_makes_axes_auto_and_adds_missing_ones():
  mesh = jax.make_mesh((8,), ("sp",))
  assert mesh.axis_types == (AxisType.Explicit,)  # what jax.make_mesh gives by default
  model_mesh = shd.model_mesh(mesh)
  assert dict(model_mesh.shape) == {"sp": 8, "dp": 1, "fsdp": 1, "tp": 1, "hp": 1}
  assert all(t == AxisType.Auto for t in model_mesh.axis_types)
  assert list(model_mesh.devices.flat) == list(mesh.devices.flat)
  ours = shd.make_mesh(sp=8)
  assert shd.model_mesh(ours) is ours


@pytest.mark.parametrize("text, devices, sizes", [
    ("1,2,1,4", None, (1, 2, 1, 1, 4)),  # the older four sizes: hp=1
    ("(1, 2, 1, 4)", None, (1, 2, 1, 1, 4)),
    ("1,2,1,2,4", None, (1, 2, 1, 2, 4)),
    ("sp=8", None, (1, 1, 1, 1, 8)),
    ("hp=2,sp=4", None, (1, 1, 1, 2, 4)),
    ("fsdp=2,sp=4", None, (1, 2, 1, 1, 4)),
    ("sp=4,fsdp=-1", 32, (1, 8, 1, 1, 4)),
    ("1,-1,16,4", 512, (1, 8, 16, 1, 4)),
    ("1,1,1,-1,2", 8, (1, 1, 1, 4, 2)),
    ("tp=2,dp=-1", None, (1, 1, 2, 1, 1)),  # unknown device count: the rest is 1
])
def test_mesh_notation(text, devices, sizes):
  assert mesh_spec.parse_mesh_sizes(text, devices) == sizes


@pytest.mark.parametrize("text", ["1,2,4", "sp=8,xp=2", "sp=8,sp=2", "sp=-1,fsdp=-1", "sp=0",
                                  "1,2,1,4,sp=2", "sp=eight", "1,1,1,1,1,1", "hp=2,hp=2"])
def test_bad_mesh_notation_is_named(text):
  with pytest.raises(ValueError, match="mesh"):
    mesh_spec.parse_mesh_sizes(text, 8)


def test_parse_mesh_named_and_positional_agree():
  assert shd.parse_mesh("fsdp=2,sp=-1").shape == shd.parse_mesh("1,2,1,4").shape
  assert mesh_spec.format_mesh((1, 2, 1, 4)) == "fsdp=2,sp=4"
  assert mesh_spec.format_mesh((1, 1, 1, 2, 4)) == "hp=2,sp=4"
  assert shd.parse_mesh("hp=2,sp=4").shape == {"dp": 1, "fsdp": 1, "tp": 1, "hp": 2, "sp": 4}
  assert shd.make_mesh(1, 2, 1, 4).shape == shd.make_mesh(fsdp=2, sp=4).shape


def test_from_hf_llama_takes_a_jax_make_mesh_mesh(tmp_path):
  """A user's `jax.make_mesh` mesh (Explicit axes by default) loads and runs a Hugging Face
  checkpoint like the one-device model."""
  config, params = tiny_params()
  model = Transformer(config, rngs=nnx.Rngs(0))
  to_hf_llama(model, str(tmp_path))
  mesh = jax.make_mesh((1, 2, 1, 1, 4), shd.MESH_AXES)
  loaded = from_hf_llama(str(tmp_path), mesh=mesh, vision_vocab_size=0)
  assert loaded.layers.wq[...].sharding.spec == P(None, ("fsdp", "sp"), None)
  tokens = model_testing.packed_batch(config, batch=2, seq=16, seed=2)["tokens"]
  np.testing.assert_allclose(np.asarray(loaded(tokens)), np.asarray(model(tokens)),
                             rtol=1e-5, atol=1e-5)
