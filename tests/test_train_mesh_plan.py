"""Meshes that cannot work are refused before tracing, in a sentence naming a mesh that would."""
import json
import os

import pytest

from lwm import sharding as shd
from lwm import stage_schema
from lwm.model import layers

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


def test_head_parallel_mesh_validates(tmp_path):
  c = quickstart_stage2(tmp_path, "hp=2,sp=4")
  assert stage_schema.mesh_sizes(c) == (1, 1, 1, 2, 4)
  stage_schema.validate(c, num_devices=8)


@pytest.mark.parametrize("mesh, seq, heads, kv_heads, message", [
    ("hp=8", 64, 12, 4, r"hp=8 must divide the 12 query heads a device holds \(heads=12 / tp=1\): "
                        r"the all-to-all gives each hp device a slice of them; use hp=4,sp=2 "
                        r"instead"),
    ("tp=2,hp=4", 64, 12, 4, r"hp=4 must divide the 6 query heads a device holds \(heads=12 / "
                             r"tp=2\).*use tp=2,hp=2,sp=2 instead"),
    ("tp=4,sp=2", 64, 12, 2, r"tp=4 must divide heads=12 and kv_heads=2.*use tp among \[1, 2\]"),
    ("hp=2,sp=4", 40, 8, 8, r"sequence length 40 must be a multiple of 2 \* sp \* hp = 16 on mesh "
                            r"hp=2,sp=4: zigzag gives each of the sp=4 ring shards two chunks, cut "
                            r"into hp=2 whole pieces; pad the sequence to a multiple of 16"),
])
def test_attention_refuses_meshes_in_a_sentence(mesh, seq, heads, kv_heads, message):
  with pytest.raises(ValueError, match=message):
    layers.check_attention_mesh(shd.parse_mesh(mesh), seq, heads, kv_heads)
