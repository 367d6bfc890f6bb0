"""Meshes that cannot work are refused before tracing, in a sentence naming a mesh that would."""
import json
import os

import pytest

from lwm import stage_schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quickstart_stage2(tmp_path, mesh):
  with open(tmp_path / "vocab.json", "w") as f:
    json.dump({"text_vocab_size": 256}, f)
  c = stage_schema.load_config(os.path.join(ROOT, "configs", "quickstart.py:stage2"))
  c.data.path, c.mesh = str(tmp_path), mesh
  return c


def test_older_four_size_mesh_still_trains_as_hp_1(tmp_path):
  c = quickstart_stage2(tmp_path, "1,1,1,8")
  assert stage_schema.mesh_sizes(c) == (1, 1, 1, 1, 8)
  stage_schema.validate(c, num_devices=8)


def test_head_parallel_mesh_is_refused_until_built(tmp_path):
  c = quickstart_stage2(tmp_path, "hp=2,sp=4")
  with pytest.raises(ValueError, match=r"hp=2: head-parallel attention .* use sp=8 instead"):
    stage_schema.validate(c, num_devices=8)
