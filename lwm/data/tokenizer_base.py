"""What every text tokenizer shares, whatever its backend: transformers' names, the vision markers,
the chat template, the side files of a Hugging Face directory and the content hash a dataset
records.

  tok.encode(text, add_special_tokens=True) -> list[int]    # BOS etc. as the tokenizer adds them
  tok.decode(ids, skip_special_tokens=False) -> str
  tok.apply_chat_template(messages, add_generation_prompt=False) -> str
  tok.bos_token_id (None: none), tok.eos_token_ids (every id that ends a generation), len(tok)
  tok.prefix_ids                  # the ids encode() puts before the text (BOS, or none)
  tok.encode_after_space(text)    # ids of a prompt piece that follows another after a space
  tok.vision_start, tok.vision_end, tok.path, tok.content_hash

Side files of a Hugging Face directory, read as transformers reads them: `tokenizer_config.json`
(bos/eos/unk/pad tokens, additional special tokens, add_bos_token/add_eos_token,
clean_up_tokenization_spaces, chat_template), `special_tokens_map.json` (the special tokens, where
tokenizer_config.json has none), `chat_template.jinja` (the chat template, first), and
`generation_config.json` (else `config.json`) for the EOS ids generation stops on.
"""
import dataclasses
import hashlib
import json
import os

RESERVED = ("<vision>", "</vision>", "<eof>", "<eov>")
SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
              "generation_config.json")


# ------------------------------------------------------------------------------------ Side files

def read_json(path: str) -> dict:
  """The JSON object in `path`, {} when the file does not exist."""
  if not os.path.isfile(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from None
  if not isinstance(value, dict):
    raise ValueError(f"{path} holds a JSON {type(value).__name__}, expected an object")
  return value


def _token_text(value):
  """A special token as the config files write it: a string, or an AddedToken dict."""
  if isinstance(value, dict):
    return value.get("content")
  return value


def _ids(value) -> tuple:
  if value is None:
    return ()
  return tuple(int(i) for i in (value if isinstance(value, (list, tuple)) else [value]))


@dataclasses.dataclass(frozen=True)
class SideFiles:
  """What a directory's side files say about its tokenizer (all None/empty without them).

  special: bos_token/eos_token/unk_token/pad_token -> text (names that are unset are left out).
  extra_special: additional special tokens. add_bos/add_eos: tokenizer_config's override of what
  the tokenizer adds, None when not set. generation_eos: EOS ids of generation_config.json, else
  of config.json.
  """
  special: dict = dataclasses.field(default_factory=dict)
  extra_special: tuple = ()
  add_bos: bool | None = None
  add_eos: bool | None = None
  clean_up_spaces: bool = False
  chat_template: str | None = None
  generation_eos: tuple = ()


def read_side_files(directory: str) -> SideFiles:
  """The side files in `directory` (see the module docstring)."""
  config = read_json(os.path.join(directory, "tokenizer_config.json"))
  tokens_map = read_json(os.path.join(directory, "special_tokens_map.json"))
  special = {}
  for name in SPECIAL_NAMES:
    text = _token_text(config[name]) if name in config else _token_text(tokens_map.get(name))
    if text is not None:
      special[name] = text
  extra = (config.get("additional_special_tokens") or config.get("extra_special_tokens") or
           tokens_map.get("additional_special_tokens") or [])
  if isinstance(extra, dict):  # transformers 5 may name them: {"image_token": "<image>"}
    extra = list(extra.values())
  generation = read_json(os.path.join(directory, "generation_config.json"))
  if generation.get("eos_token_id") is None:
    generation = read_json(os.path.join(directory, "config.json"))
  return SideFiles(special=special, extra_special=tuple(_token_text(t) for t in extra),
                   add_bos=config.get("add_bos_token"), add_eos=config.get("add_eos_token"),
                   clean_up_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
                   chat_template=_chat_template(directory, config),
                   generation_eos=_ids(generation.get("eos_token_id")))


def _chat_template(directory: str, config: dict) -> str | None:
  """chat_template.jinja, else tokenizer_config.json's chat_template (a string, or a list of named
  templates of which transformers uses "default")."""
  path = os.path.join(directory, "chat_template.jinja")
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      return f.read()
  template = config.get("chat_template")
  if isinstance(template, list):
    named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
    if "default" not in named:
      raise ValueError(f"{directory}/tokenizer_config.json lists chat templates {sorted(named)} "
                       "but none named 'default'; pass one with --chat-template FILE")
    template = named["default"]
  return template


def clean_up_tokenization(text: str) -> str:
  """transformers' clean_up_tokenization_spaces: no space before punctuation and contractions."""
  for spaced, joined in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                         (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                         (" 're", "'re")):
    text = text.replace(spaced, joined)
  return text


def added_ids(full: list, plain: list) -> tuple:
  """(ids before, ids after) `plain` (a text's ids) in `full` (the same with special tokens)."""
  start = next(i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain)
  return tuple(full[:start]), tuple(full[start + len(plain):])


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


# ------------------------------------------------------------------------------------ The interface

class TextTokenizer:
  """The interface (see the module docstring). Backends set `path`, `chat_template`, `_bos`,
  `_eos`, `_file_hash` and implement encode, decode, __len__, token_to_id and
  special_tokens_map."""
  path: str
  chat_template: str | None = None
  _bos: int | None = None
  _eos: tuple = ()
  _file_hash: str = ""

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    raise NotImplementedError

  def decode(self, ids, skip_special_tokens: bool = False) -> str:
    raise NotImplementedError

  def __len__(self) -> int:
    raise NotImplementedError

  @property
  def bos_token_id(self) -> int | None:
    """The tokenizer's BOS token (None: none); whether encode() adds it: see prefix_ids."""
    return self._bos

  @property
  def eos_token_ids(self) -> tuple:
    """Every id that ends a generation: the tokenizer's EOS first, then generation_config's."""
    return self._eos

  def token_to_id(self, token: str) -> int | None:
    """The single id of a special or added token (`<vision>` where reserved), else None."""
    raise NotImplementedError

  @property
  def special_tokens_map(self) -> dict:
    """bos_token, eos_token, ... -> text, as chat templates see them (unset names left out)."""
    raise NotImplementedError

  # ---- derived from the above

  @property
  def eos_token_id(self) -> int | None:
    """The tokenizer's own EOS (what ends a training document): the first of eos_token_ids."""
    return self.eos_token_ids[0] if self.eos_token_ids else None

  @property
  def prefix_ids(self) -> tuple:
    """The ids `encode(text)` puts before the text's own (Llama's BOS; none for ChatML)."""
    return self._added_ids()[0]

  @property
  def suffix_ids(self) -> tuple:
    """The ids `encode(text)` puts after the text's own (rare: an EOS the tokenizer appends)."""
    return self._added_ids()[1]

  def _added_ids(self) -> tuple:
    if not hasattr(self, "_added"):
      self._added = added_ids(self.encode("a", add_special_tokens=True),
                              self.encode("a", add_special_tokens=False))
    return self._added

  @property
  def marks_word_starts(self) -> bool:
    """Whether a text's ids start with a word-start mark (sentencepiece's and Metaspace's `▁`):
    then pieces encoded one by one read as if joined by spaces; byte-level ids need the space."""
    if not hasattr(self, "_marks"):
      ids = self.encode("a", add_special_tokens=False) + self.encode("b", add_special_tokens=False)
      self._marks = self.decode(ids) == "a b"
    return self._marks

  def encode_after_space(self, text: str) -> list[int]:
    """The ids of `text` as it reads after a space inside a longer text (prompts built from
    pieces joined by single spaces); no special tokens."""
    return self.encode(text if self.marks_word_starts else " " + text, add_special_tokens=False)

  def marker(self, piece: str) -> list[int]:
    """Ids of a marker such as `<vision>`: one reserved token where the tokenizer has it (ours),
    else the text's ids (LLaMA's tokenizers, as LWM does)."""
    token_id = self.token_to_id(piece)
    return [token_id] if token_id is not None else self.encode(piece, add_special_tokens=False)

  @property
  def vision_start(self) -> list[int]:
    return self.marker("<vision>")

  @property
  def vision_end(self) -> list[int]:
    return self.marker("</vision>")

  def apply_chat_template(self, messages: list, add_generation_prompt: bool = False,
                          chat_template: str | None = None, **kwargs) -> str:
    """The conversation rendered with the tokenizer's chat template (or `chat_template`), as
    transformers renders it with tokenize=False. Encode the result with add_special_tokens=False
    (the template writes BOS itself where the model wants one)."""
    from lwm.data import chat
    template = chat_template or self.chat_template
    if template is None:
      raise ValueError(f"the tokenizer {self.path} has no chat template (no chat_template in "
                       "tokenizer_config.json, no chat_template.jinja); pass one")
    return chat.render(template, messages, add_generation_prompt=add_generation_prompt,
                       **self.special_tokens_map, **kwargs)

  def with_chat_template(self, template: str | None) -> "TextTokenizer":
    """The same tokenizer with another chat template (e.g. LWM's for an LWM import)."""
    import copy
    other = copy.copy(self)
    other.chat_template = template
    return other

  @property
  def content_hash(self) -> str:
    """sha256 of what decides the ids: the tokenizer file's bytes and the special ids its side
    files set. Datasets record it (vocab.json `tokenizer_hash`); a copy hashes the same."""
    ids = {"len": len(self), "bos": self.bos_token_id, "eos": list(self.eos_token_ids),
           "prefix": list(self.prefix_ids), "suffix": list(self.suffix_ids)}
    return hashlib.sha256((self._file_hash + json.dumps(ids, sort_keys=True)).encode()).hexdigest()

  def __repr__(self) -> str:
    return (f"{type(self).__name__}({self.path!r}, {len(self)} ids, bos={self.bos_token_id}, "
            f"eos={self.eos_token_ids})")
