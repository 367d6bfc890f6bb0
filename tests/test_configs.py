"""Every stage config loads, exposes the keys a stage needs, and describes the LWM recipe."""
import importlib.util
import os

import pytest

from lwm import stage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name, arg):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("name, arg", [("tiny", "stage1"), ("tiny", "stage2")] +
                         [("lwm_text", a) for a in ("32k", "128k", "256k", "512k", "1m")] +
                         [("lwm_vision", a) for a in ("1k", "8k", "32k", "128k", "1m")])
def test_stage_configs_have_the_required_keys(name, arg):
  c = load(name, arg)
  for key in ("model", "seq_len", "rope_theta", "mesh", "init_from"):
    assert key in c
  assert c.train.steps > 0 and c.train.batch_size > 0 and c.checkpoint.every > 0
  assert "path" in c.data
  assert len(stage.mesh_sizes(c, 512)) == 4


def test_lwm_text_recipe():
  thetas = [load("lwm_text", a).rope_theta for a in ("32k", "128k", "256k", "512k", "1m")]
  assert thetas == [1e6, 1e7, 1e7, 2.5e7, 5e7]
  one_m = load("lwm_text", "1m")
  assert one_m.seq_len * one_m.train.batch_size == 4 * 2**20
  assert stage.mesh_sizes(one_m, 512) == (1, 8, 16, 4)
  assert one_m.init_from == "workdirs/text_512k"


def test_lwm_vision_recipe():
  lengths = [load("lwm_vision", a).seq_len for a in ("1k", "8k", "32k", "128k", "1m")]
  assert lengths == [1024, 8192, 32768, 131072, 1048576]
  assert {load("lwm_vision", a).rope_theta for a in ("1k", "1m")} == {5e7}


def test_unknown_stage_is_named():
  with pytest.raises(ValueError, match="takes one of"):
    load("tiny", "stage3")
