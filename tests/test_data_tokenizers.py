"""Text tokenizers: tokenizer.json tokenizers give transformers' ids, texts and chat renderings
(recorded by transformers 5.25 in tests/fixtures/hf-tokenizers), sentencepiece models keep working,
tokenizers trained here reserve the vision markers, and wrong input is refused by name."""
import json
import os
import shutil

import numpy as np
import pytest

from lwm.data import chat, text_tokenizer
from lwm.vocab import Vocab

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hf-tokenizers")
KINDS = ("bytelevel-chatml", "bytelevel-llama3", "metaspace-bytefallback")
MESSAGES = [{"role": "user", "content": "What is the secret number?"}]


def fixture(kind: str):
  with open(os.path.join(FIXTURES, kind, "expected.json")) as f:
    return text_tokenizer.load_tokenizer(os.path.join(FIXTURES, kind)), json.load(f)


# ---------------------------------------------------------------------------- transformers' output

@pytest.mark.parametrize("kind", KINDS)
def test_ids_and_decoded_texts_are_transformers(kind):
  tok, expected = fixture(kind)
  assert len(tok) == expected["len_tokenizer"]
  assert tok.bos_token_id == expected["bos_token_id"]
  assert tok.eos_token_id == expected["eos_token_id"]
  for case in expected["texts"]:
    assert tok.encode(case["text"]) == case["ids"], case["text"]
    assert tok.encode(case["text"], add_special_tokens=False) == case["ids_no_special"]
    assert tok.decode(case["ids_no_special"]) == case["decoded"]
    assert tok.decode(case["ids_no_special"], skip_special_tokens=True) == (
        case["decoded_skip_special"])
    assert tok.decode(case["ids"], skip_special_tokens=True) == case["decoded_skip_special"]


@pytest.mark.parametrize("kind", ["bytelevel-chatml", "bytelevel-llama3"])
def test_chat_templates_render_and_encode_as_transformers(kind):
  tok, expected = fixture(kind)
  for case in expected["chats"]:
    text = tok.apply_chat_template(case["messages"],
                                   add_generation_prompt=case["generation_prompt"])
    assert text == case["rendered"]
    assert tok.encode(text, add_special_tokens=False) == case["ids"]  # one BOS, the template's


def test_generation_stops_on_every_eos_of_the_configs():
  tok, expected = fixture("bytelevel-llama3")  # eos <|eot_id|> 4; generation_config [1, 4]
  assert tok.eos_token_ids[0] == expected["eos_token_id"]
  assert sorted(tok.eos_token_ids) == sorted(expected["eos_token_ids_generation"])
  assert fixture("bytelevel-chatml")[0].eos_token_ids == (2,)


def test_a_tokenizer_json_path_reads_the_side_files_of_its_directory():
  by_dir, _ = fixture("bytelevel-llama3")
  by_file = text_tokenizer.load_tokenizer(os.path.join(FIXTURES, "bytelevel-llama3",
                                                       "tokenizer.json"))
  assert by_file.content_hash == by_dir.content_hash and by_file.chat_template
  assert by_file.eos_token_ids == by_dir.eos_token_ids


def test_tokenizer_config_add_bos_and_add_eos_are_honoured(tmp_path):
  folder = tmp_path / "tok"
  shutil.copytree(os.path.join(FIXTURES, "metaspace-bytefallback"), folder)
  _, expected = fixture("metaspace-bytefallback")
  case = expected["texts"][0]
  config = json.loads((folder / "tokenizer_config.json").read_text())
  (folder / "tokenizer_config.json").write_text(json.dumps(
      dict(config, add_bos_token=False, add_eos_token=True)))
  tok = text_tokenizer.load_tokenizer(str(folder))
  assert tok.encode(case["text"]) == case["ids_no_special"] + [expected["eos_token_id"]]
  assert tok.prefix_ids == () and tok.suffix_ids == (expected["eos_token_id"],)


def test_clean_up_tokenization_spaces_is_honoured(tmp_path):
  folder = tmp_path / "tok"
  shutil.copytree(os.path.join(FIXTURES, "bytelevel-chatml"), folder)
  config = json.loads((folder / "tokenizer_config.json").read_text())
  (folder / "tokenizer_config.json").write_text(json.dumps(
      dict(config, clean_up_tokenization_spaces=True)))
  plain, _ = fixture("bytelevel-chatml")
  ids = plain.encode("Well , it is n't done !")
  assert plain.decode(ids) == "Well , it is n't done !"
  assert text_tokenizer.load_tokenizer(str(folder)).decode(ids) == "Well, it isn't done!"


# ---------------------------------------------------------------------------- Vocabulary

def test_vocabulary_layout_of_tokenizer_json_models():
  chatml, expected = fixture("bytelevel-chatml")
  vocab = Vocab.for_tokenizer(chatml, codebook_size=128)
  assert vocab.text_vocab_size == expected["len_tokenizer"] == 428  # added tokens included
  assert vocab.bos == -1 and vocab.eos == 2                        # ChatML adds no BOS
  # <vision> is not one of this tokenizer's tokens: it is spelled by the text's ids.
  ids = next(c["ids_no_special"] for c in expected["texts"] if c["text"].startswith("<vision>"))
  assert list(vocab.vision_start) == ids[:len(vocab.vision_start)] and len(vocab.vision_start) > 1
  llama3, _ = fixture("bytelevel-llama3")
  assert Vocab.for_tokenizer(llama3).bos == 0                       # its post-processor's BOS


def test_a_tokenizer_larger_than_the_model_is_refused_naming_both_sizes(tmp_path):
  from lwm import workdir
  from lwm.model import Transformer, get_config
  from flax import nnx
  tok, _ = fixture("bytelevel-chatml")
  model = Transformer(get_config("tiny", vocab_size=400, vision_vocab_size=0),
                      rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="428 ids.*only 400"):
    workdir.write_model_dir(str(tmp_path / "m"), model, Vocab.for_tokenizer(tok),
                            tokenizer=tok.path)


# ---------------------------------------------------------------------------- Chat templates

def test_lwm_format_and_no_template():
  tok, _ = fixture("metaspace-bytefallback")  # BOS <s>, no chat template
  assert chat.prompt_text(tok, "Hi?", "lwm") == (
      "<s>You are a helpful assistant. USER: Hi? ASSISTANT:")
  ids = chat.prompt_ids(tok, "Hi?", "lwm")
  assert ids == tok.encode("You are a helpful assistant. USER: Hi? ASSISTANT:")  # one BOS
  assert chat.prompt_ids(tok, "Hi?", "auto") == chat.prompt_ids(tok, "Hi?", "none") == (
      tok.encode("Hi?"))
  head, tail = chat.wrap_ids(tok, "lwm")
  body = tok.encode("Hi?", add_special_tokens=False)
  assert head + body + tail == ids


def test_wrapped_pieces_equal_the_rendered_prompt():
  tok, expected = fixture("bytelevel-chatml")
  head, tail = chat.wrap_ids(tok, "auto")
  body = tok.encode(MESSAGES[0]["content"], add_special_tokens=False)
  rendered = next(c for c in expected["chats"]
                  if c["generation_prompt"] and len(c["messages"]) == 1)
  assert head + body + tail == rendered["ids"] == chat.prompt_ids(tok, MESSAGES[0]["content"])


def test_a_template_file_and_a_template_that_fails_to_render(tmp_path):
  tok, _ = fixture("bytelevel-chatml")
  path = tmp_path / "t.jinja"
  path.write_text("{% for m in messages %}{% if m['role'] != 'user' %}"
                  "{{ raise_exception('Only user messages are supported') }}{% endif %}"
                  "[{{ m['content'] | tojson }}]{% endfor %}")
  assert chat.prompt_text(tok, "é", str(path)) == '["é"]'
  with pytest.raises(chat.ChatTemplateError, match="Only user messages are supported"):
    tok.apply_chat_template([{"role": "system", "content": "x"}], chat_template=path.read_text())
  with pytest.raises(chat.ChatTemplateError, match="does not parse"):
    tok.apply_chat_template(MESSAGES, chat_template="{% for m in messages %}")
  with pytest.raises(ValueError, match="neither one of auto, none, lwm"):
    chat.prompt_text(tok, "x", str(tmp_path / "missing.jinja"))


def test_templates_see_transformers_globals():
  tok, _ = fixture("bytelevel-llama3")
  template = ("{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
              "{% generation %}{{ m['content'] }}{% endgeneration %}{% endfor %}"
              "{{ strftime_now('%Y') | length }}{{ bos_token }}")
  assert tok.apply_chat_template(MESSAGES * 2, chat_template=template) == (
      "What is the secret number?4<|begin_of_text|>")


# ---------------------------------------------------------------------------- Sentencepiece

@pytest.fixture(scope="module")
def sp_tokenizer(tmp_path_factory):
  texts = ["the quick brown fox jumps over the lazy dog " * 5, "code 4711 " * 50]
  path = str(tmp_path_factory.mktemp("sp") / "tok.model")
  return text_tokenizer.load_tokenizer(text_tokenizer.train_tokenizer(texts, path, 320))


def test_sentencepiece_adds_bos_and_reads_control_pieces_in_text(sp_tokenizer):
  tok = sp_tokenizer
  plain = tok.encode("the fox", add_special_tokens=False)
  assert tok.encode("the fox") == [tok.bos_token_id] + plain and tok.prefix_ids == (2,)
  assert tok.encode("<s>the fox", add_special_tokens=False) == [tok.bos_token_id] + plain
  assert tok.decode([tok.bos_token_id] + plain + [tok.eos_token_id]) == "<s>the fox</s>"
  assert tok.decode([tok.bos_token_id] + plain, skip_special_tokens=True) == "the fox"
  assert tok.eos_token_ids == (3,) and len(tok) == tok.processor.vocab_size()


# ---------------------------------------------------------------------------- Training: --format hf

@pytest.fixture(scope="module")
def trained_hf(tmp_path_factory):
  texts = ["The special magic Paris number is: 4711. " * 20, "ünïcödé 中文 🚀 " * 5,
           "<vision> frames </vision> then text " * 10]
  out = str(tmp_path_factory.mktemp("hf") / "tok")
  return text_tokenizer.load_tokenizer(text_tokenizer.train_tokenizer(texts, out, 400, "hf"))


def test_a_trained_hf_tokenizer_round_trips_and_reserves_the_markers(trained_hf):
  tok = trained_hf
  assert os.path.basename(tok.path) == "tokenizer.json"
  for i, marker in enumerate(text_tokenizer.RESERVED):
    assert tok.marker(marker) == [i + 1]
    assert tok.encode(f"a{marker}b", add_special_tokens=False)[1:-1] == [i + 1]
  for text in ("never seen: Ωmega ✓ 0x1F\n\ttabs", "ünïcödé 中文 🚀", "<vision> x </vision>"):
    assert tok.decode(tok.encode(text)) == text
  digits = tok.encode("4711 1234567", add_special_tokens=False)  # one token a digit, as LLaMA's
  assert [tok.decode([i]).strip() for i in digits if tok.decode([i]).strip()] == list(
      "47111234567")
  vocab = Vocab.for_tokenizer(tok, codebook_size=16)
  assert (vocab.bos, vocab.eos, vocab.vision_start, vocab.vision_end) == (-1, 0, (1,), (2,))
  assert vocab.text_vocab_size == len(tok) <= 400


def test_train_tokenizer_script_writes_either_format(tmp_path):
  import eval_testing
  manifest = tmp_path / "m.jsonl"
  manifest.write_text("".join(json.dumps({"text": f"line {i} of the corpus."}) + "\n"
                              for i in range(50)))
  out = eval_testing.run_script("train_tokenizer.py", "--manifest", str(manifest), "--output",
                                str(tmp_path / "hf"), "--format", "hf", "--vocab-size", "300")
  assert "<vision>=[1] </vision>=[2]" in out
  tok = text_tokenizer.load_tokenizer(str(tmp_path / "hf"))
  assert tok.decode(tok.encode("line 7 of the corpus.")) == "line 7 of the corpus."


# ---------------------------------------------------------------------------- Bad input

def test_paths_without_a_readable_tokenizer_say_what_is_there_and_what_is_accepted(tmp_path):
  (tmp_path / "weights.safetensors").write_bytes(b"x")
  with pytest.raises(ValueError, match=r"holds no tokenizer.json or tokenizer.model \(it holds "
                                       r"weights.safetensors\).*a sentencepiece .model file"):
    text_tokenizer.load_tokenizer(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    text_tokenizer.load_tokenizer(str(tmp_path / "none.model"))
  (tmp_path / "tokenizer.json").write_text('{"not": "a tokenizer"}')
  with pytest.raises(ValueError, match="cannot be read as a tokenizer.json"):
    text_tokenizer.load_tokenizer(str(tmp_path))
  (tmp_path / "bad.model").write_bytes(b"\x00garbage")
  with pytest.raises(ValueError, match="bad.model' cannot be read as a sentencepiece model"):
    text_tokenizer.load_tokenizer(str(tmp_path / "bad.model"))


def test_the_content_hash_follows_the_ids_not_the_path(tmp_path, sp_tokenizer):
  copy = tmp_path / "copy"
  shutil.copytree(os.path.join(FIXTURES, "bytelevel-llama3"), copy)
  original, _ = fixture("bytelevel-llama3")
  assert text_tokenizer.load_tokenizer(str(copy)).content_hash == original.content_hash
  generation = json.loads((copy / "generation_config.json").read_text())
  (copy / "generation_config.json").write_text(json.dumps(dict(generation, eos_token_id=[4])))
  assert text_tokenizer.load_tokenizer(str(copy)).content_hash != original.content_hash
  assert sp_tokenizer.content_hash != original.content_hash
  recorded = {"tokenizer": "data/tok.model", "tokenizer_hash": sp_tokenizer.content_hash}
  text_tokenizer.check_recorded(sp_tokenizer, recorded, "the dataset data/")
  with pytest.raises(ValueError, match=r"bytelevel-llama3/tokenizer.json is not the one the "
                                       r"dataset data/ was made with \(data/tok.model\)"):
    text_tokenizer.check_recorded(original, recorded, "the dataset data/")


def test_model_directories_store_either_kind_of_tokenizer(tmp_path, sp_tokenizer):
  from lwm import workdir
  from lwm.model import get_config
  config = get_config("tiny")
  hf, _ = fixture("bytelevel-llama3")
  directory = str(tmp_path / "model")
  workdir.write_assets(directory, model_config=config, vocab=Vocab.for_tokenizer(hf),
                       tokenizer=os.path.dirname(hf.path))
  assets = workdir.read_assets(directory)
  stored = text_tokenizer.load_tokenizer(assets.tokenizer)
  assert sorted(os.listdir(assets.tokenizer)) == ["chat_template.jinja", "generation_config.json",
                                                  "tokenizer.json", "tokenizer_config.json"]
  assert stored.content_hash == hf.content_hash == assets.vocab_json["tokenizer_hash"]
  assert stored.chat_template == hf.chat_template and stored.eos_token_ids == hf.eos_token_ids
  workdir.write_assets(directory, model_config=config, vocab=Vocab.for_tokenizer(sp_tokenizer),
                       tokenizer=sp_tokenizer.path)  # the other kind replaces it
  assets = workdir.read_assets(directory)
  assert assets.tokenizer.endswith("tokenizer.model")
  assert not os.path.exists(os.path.join(directory, "assets", "tokenizer"))
  assert np.array_equal(text_tokenizer.load_tokenizer(assets.tokenizer).encode("the fox"),
                        sp_tokenizer.encode("the fox"))


@pytest.mark.parametrize("kind", KINDS)
def test_needle_prompts_read_as_their_text_with_any_tokenizer(kind):
  from lwm.eval import needle
  tok, _ = fixture(kind)
  hay = needle.haystack_tokens(tok, needle.synthetic_haystack(30, seed=2), 400)
  needles = needle.draw_needles(np.random.default_rng(0), 2, digits=4)
  for wrap in (None, chat.wrap_ids(tok, "lwm")):
    prompt = needle.build_text_prompt(tok, hay, needles, 50.0, 300, retrieve=1, wrap=wrap)
    assert len(prompt.tokens) == 300
    head, tail = wrap or (list(tok.prefix_ids), [])
    assert list(prompt.tokens[:len(head)]) == head and list(prompt.tokens[300 - len(tail):]) == tail
    # The parts read as the text joined by spaces (byte-level ids carry their spaces).
    assert tok.decode(prompt.tokens[len(head):300 - len(tail)]).strip() == prompt.text
