"""A training workdir holds what inference needs: evaluation and ask work after the dataset, the
tokenizer file and the VQGAN directory the run was trained from are deleted."""
import json
import os
import shutil

import numpy as np
import pytest

import eval_testing
from lwm import model_dir, stage_schema, train, workdir
from lwm.data.dataset import read_vocab
from lwm import vqgan
from lwm.data import preprocess, synthetic, text_tokenizer
from lwm.eval import inference, needle, video_needle
from lwm.vocab import Vocab

def tiny_stage(data_path, **changes):
  c = stage_schema.base_config()
  c.model, c.seq_len, c.rope_theta, c.mesh = "tiny", 256, 1e4, "1,8,1,1"
  c.data.path = data_path
  c.train.steps, c.train.batch_size, c.train.warmup_steps, c.train.dtype = 2, 8, 1, "float32"
  c.checkpoint.every, c.checkpoint.async_save = 2, False
  c.update_from_flattened_dict(changes)
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny stage trained on a dataset made with a tokenizer and a VQGAN, which are then deleted.
  Returns (workdir, what the dataset recorded)."""
  root = str(tmp_path_factory.mktemp("standalone"))
  sources = os.path.join(root, "sources")
  os.makedirs(sources)
  tokenizer, vq = eval_testing.make_tokenizer(sources), eval_testing.make_vqgan(sources)
  rng = np.random.default_rng(0)
  manifest = os.path.join(root, "manifest.jsonl")
  with open(manifest, "w") as f:
    for _ in range(24):
      f.write(json.dumps({"text": synthetic.random_text(rng, 200)}) + "\n")
  data = os.path.join(root, "data")
  preprocess.preprocess(preprocess.PreprocessOptions(manifest, data, tokenizer, vq), progress=False)
  recorded = read_vocab(data)
  run = os.path.join(root, "run")
  train.train(tiny_stage(data), run)
  shutil.rmtree(data)
  shutil.rmtree(sources)
  return run, recorded


def test_the_workdir_holds_the_model_config_vocabulary_tokenizer_and_vqgan(trained):
  run, recorded = trained
  assets = workdir.read_assets(run)
  assert assets.vocab == Vocab.from_json(recorded)
  assert assets.vocab.codebook_size == vqgan.get_config("tiny").codebook_size
  assert assets.tokenizer.startswith(run) and assets.vqgan.startswith(run)
  assert len(text_tokenizer.load_tokenizer(assets.tokenizer)) == recorded["text_vocab_size"]
  assert vqgan.load(assets.vqgan).config == vqgan.get_config("tiny")
  assert vqgan.load(run).config == vqgan.get_config("tiny")  # preprocess.py --vqgan RUN works too
  with open(os.path.join(run, "config.json")) as f:
    stage_config = stage_schema.base_config()
    stage_config.update(json.load(f))
  stage_config.data.path = ""  # gone; the model config needs only the recorded layout
  assert assets.model_config == model_dir.model_config(stage_config, recorded)


def test_inference_loads_the_workdir_without_its_dataset(trained):
  run, _ = trained
  loaded = model_dir.load_model(run)
  assert loaded.source.endswith("step 2") and loaded.vqgan_dir.startswith(run)
  prompt = needle.text_prompt_tokens(loaded.tokenizer, "The farmer waits.", "Who waits?")
  [answer] = inference.Generator(loaded.model)([prompt], max_new_tokens=3)
  assert len(answer) <= 3
  encoder = vqgan.FrameEncoder(vqgan.load(loaded.vqgan_dir))
  vocab = video_needle.vocab_for(loaded.tokenizer, encoder.config.codebook_size, loaded.vocab)
  assert vocab == workdir.read_assets(run).vocab


def test_assets_are_rewritten_in_place_when_a_stage_resumes(trained, tmp_path):
  run, _ = trained
  copy = str(tmp_path / "run")
  shutil.copytree(run, copy)
  assets = workdir.read_assets(copy)
  before = os.stat(os.path.join(copy, "assets", "tokenizer.model")).st_mtime_ns
  workdir.write_assets(copy, model_config=assets.model_config, vocab=assets.vocab,
                       tokenizer=assets.tokenizer, vqgan=assets.vqgan, sampling=assets.sampling,
                       extra={"dataset": assets.vocab_json["dataset"]})
  assert os.stat(os.path.join(copy, "assets", "tokenizer.model")).st_mtime_ns == before
  assert workdir.read_assets(copy) == assets


def test_a_named_size_that_differs_from_init_from_is_refused(trained):
  run, recorded = trained
  config = tiny_stage("", init_from=run, model_overrides={"rms_norm_eps": 1e-6})
  with pytest.raises(ValueError, match="rms_norm_eps"):
    model_dir.model_config(config, recorded)
  config = tiny_stage("", init_from=run, model="init_from")
  assert model_dir.model_config(config, recorded) == workdir.read_model_config(run)


@pytest.mark.slow
def test_eval_needle_and_ask_scripts_run_on_the_standalone_workdir(trained, tmp_path):
  run, _ = trained
  out = str(tmp_path / "out")
  stdout = eval_testing.run_script("eval_needle.py", "--checkpoint", run, "--mode", "video",
                      "--context-lengths", "200", "--depth-intervals", "2", "--output", out,
                      "--mesh", "1,1,1,8")
  assert "overall accuracy" in stdout
  clip = synthetic.write_video(str(tmp_path / "clip.mp4"), synthetic.moving_frames(6, 32, 32))
  answer = eval_testing.run_script("ask.py", "--checkpoint", run, "--video", clip, "--question",
                      "What number is shown in the video?", "--max-new-tokens", "3",
                      "--mesh", "1,1,1,8")
  assert answer.endswith("\n")
