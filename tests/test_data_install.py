"""The package is complete on its own: installed with `pip install .` (not editable) and used from
a folder outside the checkout, it preprocesses a manifest on a local Dask cluster and reads the
dataset back (the TFDS builder ships inside `lwm`, nothing is loaded from the checkout's data/)."""
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAM = """
import json, os, sys
import lwm
assert lwm.__file__.startswith(sys.argv[1]), lwm.__file__
import numpy as np
from lwm.data import load_examples, synthetic, text_tokenizer
from lwm.data.preprocess import PreprocessOptions, preprocess
if __name__ == "__main__":
  rng = np.random.default_rng(0)
  texts = [synthetic.random_text(rng, 200) for _ in range(5)]
  with open("m.jsonl", "w") as f:
    f.writelines([json.dumps({"text": t}) + "\\n" for t in texts] + ["not json\\n"])
  tok = text_tokenizer.train_tokenizer(texts, "tok.model", vocab_size=300)
  summary = preprocess(PreprocessOptions("m.jsonl", "out", tok, None, chunk_size=2), workers=1,
                       progress=False)
  assert (summary["examples"], summary["failures"]) == (5, 1), summary
  assert sorted(e["line"] for e in load_examples("out")) == [1, 2, 3, 4, 5]
  print("preprocessed outside the checkout")
"""


def _can_build_offline() -> bool:
  """pip --no-build-isolation builds the wheel with this environment's setuptools, which needs the
  `wheel` package before setuptools 70.1 (a fresh venv's pip would fetch both)."""
  import setuptools
  major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
  return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _can_build_offline(), reason="no offline wheel build: pip install wheel "
                    "(docs/data.md has the one-off check in a fresh venv)")
def test_pip_installed_package_preprocesses_outside_the_checkout(tmp_path):
  source, site, work = tmp_path / "source", tmp_path / "site", tmp_path / "work"
  shutil.copytree(os.path.join(ROOT, "lwm"), source / "lwm",
                  ignore=shutil.ignore_patterns("__pycache__"))
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(ROOT, name), source / name)
  subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                  "--no-build-isolation", "--target", str(site), str(source)], check=True)
  shutil.rmtree(source)  # the installed copy must be all it needs
  work.mkdir()
  (work / "program.py").write_text(PROGRAM)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run([sys.executable, "program.py", str(site)], cwd=work, capture_output=True,
                          text=True, env=dict(env, PYTHONPATH=str(site)), timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  assert "preprocessed outside the checkout" in result.stdout
