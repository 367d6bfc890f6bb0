"""LWM's VQGAN read from its own pickle reproduces what LWM's code computed (tests/fixtures/lwm*,
written by LWM at commit f45d2b7 with JAX 0.4.29; see their README.md for the conventions)."""
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.core import FrozenDict

from lwm import vqgan
from lwm.data import interleave
from lwm.vqgan import lwm_format as vqgan_lwm
from lwm.vocab import Vocab

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
SETS = ["lwm", "lwm-b"]


def fixture(name):
  d = os.path.join(FIXTURES, name)
  return vqgan.from_lwm(os.path.join(d, "vqgan"), os.path.join(d, "vqgan_config.json")), dict(
      np.load(os.path.join(d, "vqgan_io.npz")))


@pytest.mark.parametrize("name", SETS)
def test_codes_and_reconstructions_match_lwm(name):
  model, io = fixture(name)
  pixels = vqgan.to_pixels(io["frames"])
  np.testing.assert_allclose(np.asarray(pixels), io["pixel_values"], atol=1e-6)
  np.testing.assert_allclose(np.asarray(model._latents(pixels)), io["encoder_out"], atol=1e-4)
  codes = np.asarray(model.encode(pixels))
  np.testing.assert_array_equal(codes, io["codes"])
  np.testing.assert_allclose(np.asarray(model.codebook[...])[codes], io["quantized"], atol=1e-4)
  recon = np.asarray(model.decode(io["codes"]))
  np.testing.assert_allclose(recon, io["recon"], atol=5e-4)
  decoded = model.decoder(model.post_quant_conv(model.codebook[...][io["codes"]]))
  np.testing.assert_allclose(np.asarray(decoded), io["decoder_out"], atol=5e-4)
  as_uint8 = ((recon + 1) * 127.5).astype(np.uint8)  # LWM truncates
  assert np.abs(as_uint8.astype(int) - io["recon_uint8"]).max() <= 1


@pytest.mark.parametrize("name", SETS)
def test_jitted_encoder_and_lwm_frame_tokens(name):
  model, io = fixture(name)
  frames = io["frames"]
  codes = vqgan.FrameEncoder(model, batch_size=2)(frames)  # one full and one padded batch (lwm-b)
  np.testing.assert_array_equal(codes, io["codes"].reshape(len(frames), -1))
  # LWM writes <eof> 8192 / <eov> 8193 (its 8192-code layout) whatever the VQGAN: explicit ids.
  vocab = Vocab(bos=1, eos=2, vision_start=(), vision_end=(),
                codebook_size=model.config.codebook_size, eof=8192, eov=8193,
                vision_vocab_size=8448)
  np.testing.assert_array_equal(interleave.vision_tokens(codes, vocab), io["vision_tokens"])


def test_saved_import_loads_as_a_vqgan_directory(tmp_path):
  model, io = fixture("lwm-b")
  vqgan.save(str(tmp_path / "vq"), model)
  again = vqgan.load(str(tmp_path / "vq"))
  assert again.config == model.config
  codes = again.encode(vqgan.to_pixels(io["frames"]))
  np.testing.assert_array_equal(np.asarray(codes), io["codes"])


def test_released_config_has_the_released_parameter_count():
  config = vqgan_lwm.config_from_lwm(None)
  assert config == vqgan.get_config("lwm")
  abstract = nnx.eval_shape(lambda: vqgan.VQGAN(config, rngs=nnx.Rngs(0)))
  # The released 585 MB file holds 146,244,675 float32 numbers (fixture README).
  assert sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))) == 146_244_675


def test_frozen_dicts_and_jax_arrays_are_read(tmp_path):
  flat = vqgan_lwm.read_pickle(os.path.join(FIXTURES, "lwm", "vqgan"))
  tree = {}
  for key, value in flat.items():
    node = tree
    for part in key.split("/")[:-1]:
      node = node.setdefault(part, {})
    node[key.split("/")[-1]] = jnp.asarray(value)
  with open(tmp_path / "vqgan", "wb") as f:
    pickle.dump(FrozenDict({"params": tree}), f)
  again = vqgan_lwm.read_pickle(str(tmp_path / "vqgan"))
  assert again.keys() == flat.keys()
  for key in flat:
    np.testing.assert_array_equal(again[key], flat[key])


class Boom:
  def __reduce__(self):
    return (os.getcwd, ())


def test_other_pickled_objects_are_refused(tmp_path):
  with open(tmp_path / "vqgan", "wb") as f:
    pickle.dump({"encoder": {"x": Boom()}}, f)
  with pytest.raises(pickle.UnpicklingError, match="posix.getcwd"):
    vqgan_lwm.read_pickle(str(tmp_path / "vqgan"))


@pytest.mark.parametrize("field,value", [("attn_resolutions", [16]), ("no_attn_mid_block", False),
                                         ("resample_with_conv", False), ("num_channels", 1),
                                         ("use_attention", True)])
def test_fields_we_do_not_build_are_refused_by_name(field, value):
  with pytest.raises(ValueError, match=field):
    vqgan_lwm.config_from_lwm({field: value})


def test_a_config_that_does_not_fit_the_file_is_refused():
  path = os.path.join(FIXTURES, "lwm", "vqgan")
  with pytest.raises(ValueError, match="lacks|has no place"):
    vqgan.from_lwm(path, os.path.join(FIXTURES, "lwm-b", "vqgan_config.json"))
