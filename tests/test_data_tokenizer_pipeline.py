"""The pipeline with a tokenizer.json tokenizer: a byte-level BPE trained with --format hf
tokenizes a corpus, a tiny model trains on it, eval_needle and ask run on the model directory
(slow); a dataset, a model and a tokenizer that do not belong together are refused naming both
files."""
import importlib.util
import json
import os
import shutil

import numpy as np
import pytest

from lwm import model_dir, stage_schema, train, workdir
from lwm.data import load_examples, preprocess, synthetic, text_tokenizer
from lwm.data.dataset import read_vocab
from lwm.eval import needle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "hf-tokenizers")


def script(name: str):
  """scripts/<name> as a module (its main runs in this process: no second JAX start-up)."""
  spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(ROOT, "scripts", name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def corpus(root: str) -> str:
  rng = np.random.default_rng(0)
  docs = [synthetic.random_text(rng, int(rng.integers(50, 200))) for _ in range(24)]
  hay = needle.synthetic_haystack(40, seed=1)
  for n in needle.draw_needles(rng, 24, digits=3, split="train"):
    docs.append(needle.format_prompt(hay + " " + needle.text_needle_sentence(n.key, n.value),
                                     needle.text_question(n.key)) + needle.text_answer(n.value))
  manifest = os.path.join(root, "manifest.jsonl")
  with open(manifest, "w") as f:
    f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
  return manifest


def tiny_stage(data: str, **changes):
  c = stage_schema.base_config()
  c.model, c.seq_len, c.mesh, c.data.path = "tiny", 256, "1,8,1,1", data
  c.train.steps, c.train.batch_size, c.train.lr, c.train.warmup_steps = 2, 8, 3e-3, 1
  c.train.dtype, c.checkpoint.every, c.checkpoint.async_save = "float32", 2, False
  c.update(changes)
  return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A dataset tokenized by a tokenizer trained with --format hf, and a model directory with a
  random tiny model for it (its assets hold the tokenizer)."""
  from flax import nnx
  from lwm.model import Transformer, get_config
  from lwm.vocab import Vocab
  root = str(tmp_path_factory.mktemp("hf_pipeline"))
  manifest = corpus(root)
  with open(manifest) as f:
    texts = [json.loads(line)["text"] for line in f]
  tok_dir = text_tokenizer.train_tokenizer(texts, os.path.join(root, "tok"), 500, format="hf")
  data = os.path.join(root, "data")
  preprocess.preprocess(preprocess.PreprocessOptions(manifest, data, tok_dir, None),
                        progress=False)
  model = os.path.join(root, "model")
  vocab = Vocab.from_json(read_vocab(data))
  config = get_config("tiny", vocab_size=vocab.text_vocab_size, vision_vocab_size=0)
  workdir.write_model_dir(model, Transformer(config, rngs=nnx.Rngs(0)), vocab, tokenizer=tok_dir)
  return {"root": root, "texts": texts, "tokenizer": text_tokenizer.load_tokenizer(tok_dir),
          "data": data, "model": model}


def test_the_dataset_holds_the_tokenizers_ids_and_records_its_hash(run):
  tok = run["tokenizer"]
  recorded = read_vocab(run["data"])
  assert recorded["tokenizer_hash"] == tok.content_hash
  assert (recorded["bos"], recorded["eos"], recorded["text_vocab_size"]) == (-1, 0, len(tok))
  first = next(e for e in load_examples(run["data"]) if e["line"] == 1)
  # No BOS (the tokenizer adds none), the text's ids, EOS <|endoftext|>.
  assert first["tokens"].tolist() == tok.encode(run["texts"][0]) + [tok.eos_token_id]


@pytest.mark.slow
def test_train_then_eval_needle_and_ask(run, capsys):
  trained = os.path.join(run["root"], "run")
  train.train(tiny_stage(run["data"]), trained)
  assets = workdir.read_assets(trained)
  assert assets.tokenizer.endswith(os.path.join("assets", "tokenizer"))
  loaded = model_dir.load_model(trained)
  assert loaded.tokenizer.content_hash == run["tokenizer"].content_hash
  out = os.path.join(run["root"], "needle")
  script("eval_needle.py").main(["--checkpoint", trained, "--context-lengths", "128",
                                 "--depths", "50", "--digits", "3", "--max-new-tokens", "4",
                                 "--output", out, "--split", "train"])
  [cell] = json.load(open(os.path.join(out, "results.json")))
  assert cell["prompt_tokens"] == 128
  assert "chat_template" not in json.load(open(os.path.join(out, "run.json")))  # none applies
  doc = os.path.join(run["root"], "doc.txt")
  with open(doc, "w") as f:
    f.write(needle.synthetic_haystack(5) + " The special magic Paris number is: 123.")
  capsys.readouterr()
  script("ask.py").main(["--checkpoint", trained, "--text-file", doc, "--question",
                         "What is the special magic Paris number?", "--max-new-tokens", "4",
                         "--chat-template", "lwm"])
  captured = capsys.readouterr()
  assert "prompt tokens" in captured.err and captured.out.endswith("\n")


def test_another_tokenizer_is_refused_naming_both_files(run, tmp_path):
  other = os.path.join(FIXTURES, "bytelevel-chatml")
  with pytest.raises(ValueError, match=rf"{other}/tokenizer.json is not the one the model "
                                       rf"{run['model']} was made with"):
    model_dir.load_model(run["model"], tokenizer=other)
  # Training from a Hugging Face directory whose tokenizer is not the dataset's.
  hf = tmp_path / "hf"
  shutil.copytree(other, hf)
  (hf / "model.safetensors").write_bytes(b"")
  with pytest.raises(ValueError, match=rf"tokenized with {run['tokenizer'].path[:-15]}.*but "
                                       rf"config.init_from='{hf}' was made with the tokenizer "
                                       rf"in {hf}/tokenizer.json"):
    train.train(tiny_stage(run["data"], init_from=str(hf)), str(tmp_path / "a"))
  # A dataset made with another tokenizer, trained from the model directory.
  data = tmp_path / "other_data"
  data.mkdir()
  recorded = dict(read_vocab(run["data"]), tokenizer=other,
                  tokenizer_hash=text_tokenizer.load_tokenizer(other).content_hash)
  (data / "vocab.json").write_text(json.dumps(recorded))
  with pytest.raises(ValueError, match=rf"tokenized with {other} but config.init_from="
                                       rf"'{run['model']}' was made with the tokenizer in "
                                       rf"{run['model']}/assets"):
    train.train(tiny_stage(str(data), init_from=run["model"]), str(tmp_path / "b"))
  # Held-out data made with another tokenizer.
  held_out = tiny_stage(run["data"])
  held_out.eval.every, held_out.eval.data_path = 1, str(data)
  with pytest.raises(ValueError, match=rf"eval.data_path='{data}' was tokenized with {other} and "
                                       rf"config.data.path='{run['data']}' with "):
    stage_schema.validate(held_out, 8)
  # The model directory's own tokenizer is its dataset's: no refusal there.
  model_dir.check_init_tokenizer(tiny_stage(run["data"], init_from=run["model"]))


def test_a_hugging_face_directory_brings_its_tokenizer_if_it_fits(tmp_path):
  import sentencepiece as spm
  hf = tmp_path / "hf"
  shutil.copytree(os.path.join(ROOT, "tests", "fixtures", "hf", "llama-rope-parameters"), hf)
  spm.SentencePieceTrainer.train(sentence_iterator=iter([needle.synthetic_haystack(50)] * 3),
                                 model_prefix=str(hf / "tokenizer"), vocab_size=100,
                                 minloglevel=2, hard_vocab_limit=False)
  loaded = model_dir.load_model(str(hf))  # config.json: vocab_size 256
  assert loaded.tokenizer.path == str(hf / "tokenizer.model") and len(loaded.tokenizer) == 100
  for name in ("tokenizer.json", "tokenizer_config.json"):  # 428 ids: more than the model's rows
    shutil.copy(os.path.join(FIXTURES, "bytelevel-chatml", name), hf / name)
  with pytest.raises(ValueError, match=r"has 428 ids but the model .* only 256 rows"):
    model_dir.load_model(str(hf))
