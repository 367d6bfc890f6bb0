"""Text needle in a haystack: the needle and prompt format (shared with training), haystacks,
the grid.

Format (one place, used by evaluation and by the demo's training examples):

  needle:   "The special magic {key} number is: {value}."
  question: "What is the special magic {key} number?"  (several keys: "What are the special magic
            numbers for {k1}, {k2} and {k3}?")
  prompt:   BOS {haystack with needles} Question: {question} Answer:
  answer:   " {value}" (several: " {v1}, {v2}, {v3}") then EOS

With a chat template (`--chat-template`, lwm.data.chat) the prompt without BOS is the user's
message and the template's text goes around it (its BOS included). Answers get RULER's NIAH budget
of 128 new tokens by default (a chat model may restate the question first); the value is found
anywhere in the answer (lwm.eval.grid.score_answer).

Parts are joined by single spaces and each is encoded as it reads after a space
(`encode_after_space`), so the prompt's ids are those of the whole text (a training document) with a
sentencepiece tokenizer, and nearly so with a byte-level one. Context lengths and depths
are measured in the model's tokens: the prompt has exactly `context_length` tokens and a needle goes
to the last sentence boundary at or before `depth`% of the haystack's tokens.
"""
import dataclasses
import os

import numpy as np

from lwm.data import chat
from lwm.eval import grid

MAX_NEW_TOKENS = 128  # RULER's tokens_to_generate for NIAH
NEEDLE_TEMPLATE = "The special magic {key} number is: {value}."
QUESTION_TEMPLATE = "What is the special magic {key} number?"
QUESTIONS_TEMPLATE = "What are the special magic numbers for {keys}?"
PROMPT_TEMPLATE = "{context} Question: {question} Answer:"

# Keys of the needles: city names. Evaluation draws from split "eval", the demo's training data
# from "train", so a model cannot have memorised an evaluated key.
CITIES = (
    "Amsterdam Athens Auckland Baghdad Bangkok Barcelona Beijing Belgrade Berlin Bogota "
    "Boston Brisbane Brussels Bucharest Budapest Cairo Calgary Cape-Town Caracas Chicago "
    "Copenhagen Dakar Dallas Delhi Denver Doha Dubai Dublin Edinburgh Florence Geneva "
    "Glasgow Hanoi Havana Helsinki Houston Istanbul Jakarta Jerusalem Kabul Karachi "
    "Kathmandu Kyiv Kyoto Lagos Lima Lisbon London Madrid Manila Marseille Melbourne "
    "Mexico-City Miami Milan Montreal Moscow Mumbai Munich Nairobi Naples Oslo Ottawa Paris "
    "Perth Prague Quito Reykjavik Riga Rome Santiago Seattle Seoul Shanghai Singapore Sofia "
    "Stockholm Sydney Taipei Tallinn Tehran Tokyo Toronto Tunis Valencia Venice Vienna "
    "Vilnius Warsaw Zagreb Zurich").split()
SPLITS = ("train", "eval", "all")


@dataclasses.dataclass(frozen=True)
class Needle:
  key: str
  value: str


def needle_keys(split: str = "eval") -> tuple:
  """Keys of a split: every fourth city is held out for evaluation."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if split == "all":
    return CITIES
  return tuple(c for i, c in enumerate(CITIES) if (i % 4 == 0) == (split == "eval"))


def draw_values(rng: np.random.Generator, count: int, *, digits: int = 7,
                values=None) -> list[str]:
  """`count` distinct values: `digits`-digit numbers (no leading 0), or members of `values` (a
  pool, e.g. values a model never saw in training)."""
  if values is not None:
    pool = sorted(set(values))
    if count > len(pool):
      raise ValueError(f"cannot draw {count} distinct values from a pool of {len(pool)}")
    return [pool[i] for i in rng.choice(len(pool), count, replace=False)]
  if digits < 1 or count > 9 * 10 ** (digits - 1):
    raise ValueError(f"cannot draw {count} distinct values of {digits} digits")
  drawn = set()
  while len(drawn) < count:
    drawn.add(str(int(rng.integers(10 ** (digits - 1), 10 ** digits))))
  return sorted(drawn, key=lambda _: rng.random())


def read_values(path: str) -> list[str]:
  """A value pool file: one value per line (blank lines ignored)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"values file {path!r} does not exist")
  with open(path, encoding="utf-8") as f:
    values = [line.strip() for line in f if line.strip()]
  if not values:
    raise ValueError(f"values file {path!r} holds no values")
  return values


def draw_needles(rng: np.random.Generator, count: int, *, digits: int = 7, split: str = "eval",
                 values=None) -> list[Needle]:
  """`count` needles: distinct keys of `split` and distinct values (see `draw_values`)."""
  keys = needle_keys(split)
  if not 1 <= count <= len(keys):
    raise ValueError(f"cannot draw {count} needles from {len(keys)} keys of split {split!r}")
  chosen = rng.choice(len(keys), count, replace=False)
  drawn = draw_values(rng, count, digits=digits, values=values)
  return [Needle(keys[i], v) for i, v in zip(chosen, drawn)]


def text_needle_sentence(key: str, value: str) -> str:
  return NEEDLE_TEMPLATE.format(key=key, value=value)


def text_question(keys) -> str:
  """The question for one key, or for several keys at once."""
  keys = [keys] if isinstance(keys, str) else list(keys)
  if len(keys) == 1:
    return QUESTION_TEMPLATE.format(key=keys[0])
  return QUESTIONS_TEMPLATE.format(keys=", ".join(keys[:-1]) + " and " + keys[-1])


def text_answer(values) -> str:
  """What the model should generate after "Answer:" (with its leading space)."""
  values = [values] if isinstance(values, str) else list(values)
  return " " + ", ".join(values)


def format_prompt(context: str, question: str) -> str:
  """The prompt as a string; a training document is `format_prompt(...) + text_answer(...)`."""
  return PROMPT_TEMPLATE.format(context=context, question=question)


def question_suffix(question: str) -> str:
  """The part of the prompt after the context (the prompt's last tokens)."""
  return format_prompt("", question).lstrip()


def text_prompt_tokens(tokenizer, document: str, question: str,
                       chat_template: str = "none") -> np.ndarray:
  """A question about a whole document: BOS {document} Question: {question} Answer:, or that
  text (without BOS) as the user's message of `chat_template` (see lwm.data.chat)."""
  text = format_prompt(" ".join(document.split()), question)
  return np.asarray(chat.prompt_ids(tokenizer, text, chat_template), np.int32)


# ------------------------------------------------------------------------------------ Haystacks

_SUBJECTS = ("the old farmer", "a quiet river", "the morning train", "every garden", "the painter",
             "a small boat", "the library", "our neighbour", "the winter wind", "a tired horse",
             "the market", "the lighthouse", "a young student", "the forest", "the baker")
_VERBS = ("waits beside", "drifts past", "looks toward", "remembers", "carries", "follows",
          "returns to", "sings about", "wanders near", "dreams of", "leans against", "passes")
_OBJECTS = ("the stone bridge", "a field of wheat", "the distant hills", "an open window",
            "the harbour", "a wooden fence", "the village square", "a crowded street",
            "the orchard", "a silver lake", "the castle walls", "a narrow path", "the evening sky")
_ENDINGS = ("", " in the rain", " at dawn", " without a word", " once again", " before dinner",
            " with great care", " for a while")


def synthetic_haystack(num_sentences: int, seed: int = 0) -> str:
  """Plain sentences without digits (a built-in filler when no haystack text is given)."""
  rng = np.random.default_rng(seed)
  pick = lambda words: words[int(rng.integers(len(words)))]
  sentences = []
  for _ in range(num_sentences):
    s = f"{pick(_SUBJECTS)} {pick(_VERBS)} {pick(_OBJECTS)}{pick(_ENDINGS)}."
    sentences.append(s[0].upper() + s[1:])
  return " ".join(sentences)


def read_haystack(path: str) -> str:
  """A haystack text file (.txt), or a JSONL text dataset whose lines have a "text" field."""
  import json
  if not os.path.isfile(path):
    raise FileNotFoundError(f"haystack file {path!r} does not exist")
  with open(path, encoding="utf-8") as f:
    if not path.endswith(".jsonl"):
      return " ".join(f.read().split())
    texts = [json.loads(line).get("text", "") for line in f if line.strip()]
  return " ".join(" ".join(texts).split())


def haystack_tokens(tokenizer, text: str, min_tokens: int) -> np.ndarray:
  """The text's token ids, repeated (joined by a space) until there are at least `min_tokens`."""
  first = np.asarray(tokenizer.encode(text, add_special_tokens=False), np.int32)
  if len(first) == 0:
    raise ValueError("the haystack text has no tokens")
  again = np.asarray(tokenizer.encode_after_space(text), np.int32)
  return np.concatenate([first] + [again] * -(-max(min_tokens - len(first), 0) // len(again)))[
      :max(min_tokens, 0)]


def token_texts(tokenizer, tokens) -> list[str]:
  """The text each token adds after another token, its leading space kept (a decoder drops the
  space of a text's first token: each is decoded after an anchor token)."""
  anchor = tokenizer.encode("x", add_special_tokens=False)
  start = len(tokenizer.decode(anchor))
  texts = {t: tokenizer.decode(anchor + [t])[start:] for t in set(np.asarray(tokens).tolist())}
  return [texts[int(t)] for t in tokens]


def sentence_starts(tokenizer, tokens: np.ndarray) -> np.ndarray:
  """Indices i where a sentence starts: token i-1 ends with . ! or ? and token i starts with a
  space. 0 and len(tokens) are always included."""
  pieces = token_texts(tokenizer, tokens)
  starts = [i for i in range(1, len(pieces))
            if pieces[i - 1].rstrip().endswith((".", "!", "?")) and pieces[i][:1].isspace()]
  return np.asarray([0] + starts + [len(tokens)], np.int64)


def sentence_cuts(tokenizer, hay: np.ndarray, depths) -> list[int]:
  """For each depth (% of `hay`'s tokens), the last sentence start at or before it: where a needle
  inserted at that depth goes."""
  starts = sentence_starts(tokenizer, hay)
  return [int(starts[starts <= round(d / 100.0 * len(hay))].max()) for d in depths]


# ------------------------------------------------------------------------------------ Prompts

@dataclasses.dataclass
class TextPrompt:
  """tokens: int32 `[context_length]`. needle_positions: index in `tokens` of each needle's first
  token. needle_depths: each needle's insertion point as a percentage of the haystack's tokens.
  expected: the values asked for, in the question's order. text: the same prompt as a string."""
  tokens: np.ndarray
  needle_positions: list
  needle_depths: list
  haystack_length: int
  question: str
  expected: list
  text: str


def needle_depths(depth: float, count: int) -> list[float]:
  """The first needle at `depth`, the others evenly spread over the rest of the haystack."""
  return [depth + i * (100.0 - depth) / count for i in range(count)]


def build_text_prompt(tokenizer, haystack: np.ndarray, needles: list[Needle], depth: float,
                      context_length: int, retrieve: int | None = None,
                      wrap: tuple | None = None) -> TextPrompt:
  """A prompt of exactly `context_length` tokens: BOS, the first haystack tokens with the needles
  inserted at sentence boundaries (needle i at `needle_depths(depth, len(needles))[i]`% of the
  haystack, moved back to the sentence start before it), then the question about the first
  `retrieve` needles (all by default). `haystack` must have enough tokens (see haystack_tokens).
  wrap: (ids before, ids after) the prompt from `lwm.data.chat.wrap_ids` (default: the tokenizer's
  BOS before, nothing after)."""
  retrieve = len(needles) if retrieve is None else retrieve
  if not 1 <= retrieve <= len(needles):
    raise ValueError(f"retrieve={retrieve} must be between 1 and the {len(needles)} needles")
  if not 0 <= depth <= 100:
    raise ValueError(f"depth={depth} must be a percentage in [0, 100]")
  asked = needles[:retrieve]
  question = text_question([n.key for n in asked])
  head, tail = wrap or (list(tokenizer.prefix_ids), [])
  needle_ids = [tokenizer.encode_after_space(text_needle_sentence(n.key, n.value))
                for n in needles]
  suffix = tokenizer.encode_after_space(question_suffix(question)) + list(tail)
  length = context_length - len(head) - sum(map(len, needle_ids)) - len(suffix)
  if length < 1:
    raise ValueError(f"context_length={context_length} leaves no room for a haystack: BOS (or the "
                     f"chat template), needles and question take {context_length - length} tokens")
  if len(haystack) < length:
    raise ValueError(f"the haystack has {len(haystack)} tokens, {length} are needed")
  hay = np.asarray(haystack[:length], np.int32)
  cuts = sentence_cuts(tokenizer, hay, needle_depths(depth, len(needles)))
  pieces, texts, positions, previous = [head], [], [], 0
  for cut, ids, needle in zip(cuts, needle_ids, needles):
    pieces.append(hay[previous:cut])
    texts.append(tokenizer.decode(hay[previous:cut]).strip())
    positions.append(sum(map(len, pieces)))
    pieces.append(ids)
    texts.append(text_needle_sentence(needle.key, needle.value))
    previous = cut
  pieces += [hay[previous:], suffix]
  texts.append(tokenizer.decode(hay[previous:]).strip())
  tokens = np.concatenate([np.asarray(p, np.int32) for p in pieces])
  context = " ".join(t for t in texts if t)
  return TextPrompt(tokens, positions, [100.0 * c / length for c in cuts], length, question,
                    [n.value for n in asked], format_prompt(context, question))


def training_document(prompt: TextPrompt) -> str:
  """The prompt with its answer, as one text document for the data stage's manifest."""
  return prompt.text + text_answer(prompt.expected)


# ------------------------------------------------------------------------------------ The grid

def grid_cells(context_lengths, depths, rounds: int = 1) -> list[dict]:
  return [{"context_length": int(n), "depth": float(d), "round": r}
          for n in context_lengths for d in depths for r in range(rounds)]


def cell_rng(seed: int, cell: dict) -> np.random.Generator:
  return np.random.default_rng([seed, cell["context_length"], int(cell["depth"] * 1000),
                                cell["round"]])


def run_text_needle(loaded, *, output: str, context_lengths, depths, rounds: int = 1,
                    needles: int = 1, retrieve: int = 1, haystack: str | None = None,
                    digits: int = 7, values=None, seed: int = 0, split: str = "eval",
                    max_new_tokens: int | None = None, temperature: float = 0.0,
                    top_p: float = 1.0, progress: bool = True, generator=None,
                    chat_template: str = "auto") -> dict:
  """Runs (or resumes) the text needle grid; writes OUT/results.json, OUT/heatmap.png.

  loaded: a `lwm.model_dir.LoadedModel` (model + tokenizer). haystack: a .txt or .jsonl file,
  or None for the built-in filler. values: a pool to draw needle values from (default: any
  `digits`-digit number). max_new_tokens: default MAX_NEW_TOKENS. chat_template: auto, none, lwm
  or a Jinja file (lwm.data.chat). Returns the summary: accuracy, per-cell scores, the table.
  """
  from lwm.eval import inference
  tokenizer = loaded.tokenizer
  if tokenizer is None:
    raise ValueError("the text needle needs a tokenizer: pass --tokenizer PATH")
  generator = generator or inference.Generator(loaded.model)
  values = None if values is None else sorted(set(values))
  settings = dict(mode="text", needles=needles, retrieve=retrieve, digits=digits, values=values,
                  seed=seed,
                  split=split, haystack=os.path.abspath(haystack) if haystack else "synthetic",
                  temperature=temperature, top_p=top_p, source=loaded.source,
                  **chat.run_setting(tokenizer, chat_template))
  wrap = chat.wrap_ids(tokenizer, chat_template)
  results = grid.Results(output, settings)
  longest = max(context_lengths)
  if haystack:
    text = read_haystack(haystack)
  else:  # ~12 tokens a sentence with a small tokenizer; the tiling below covers any shortfall
    text = synthetic_haystack(max(64, longest // 8), seed)
  hay = haystack_tokens(tokenizer, text, longest)
  max_new_tokens = max_new_tokens or MAX_NEW_TOKENS

  def evaluate(cell):
    drawn = draw_needles(cell_rng(seed, cell), needles, digits=digits, split=split, values=values)
    prompt = build_text_prompt(tokenizer, hay, drawn, cell["depth"], cell["context_length"],
                               retrieve, wrap)
    [ids] = generator([prompt.tokens], max_new_tokens=max_new_tokens,
                      eos_ids=tokenizer.eos_token_ids, temperature=temperature, top_p=top_p,
                      seed=seed + cell["round"])
    answer = tokenizer.decode(ids, skip_special_tokens=True)
    return {"prompt_tokens": len(prompt.tokens), "needle_positions": prompt.needle_positions,
            "needle_depths": prompt.needle_depths, "keys": [n.key for n in drawn],
            "values": [n.value for n in drawn], "question": prompt.question,
            "expected": ", ".join(prompt.expected), "answer": answer,
            "score": grid.score_answer(answer, prompt.expected)}

  summary = grid.run_grid(results, grid_cells(context_lengths, depths, rounds), evaluate,
                          title=f"Text needle ({needles} inserted, {retrieve} asked)",
                          progress=progress)
  return summary
