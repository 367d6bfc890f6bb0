"""lwm's RULER-style text tasks (after NVIDIA/RULER's synthetic tasks) on a depth grid, with lengths
and depths in the model's tokens: lwm's own suite (`eval_long.py --tasks`), whose depth x length
heatmaps RULER does not have. Prompts, positions and scoring differ from RULER's (docs/eval.md);
RULER as RULER builds and scores it is `ruler_suite.py` (`eval_long.py --suite ruler`).

  sample = make_text_sample("niah_multikey", tokenizer, rng, context_length=4096, depth=50)

Tasks (RULER's name where it differs):
- niah_single (niah_single_2): one needle "One of the special magic numbers for {key} is: {value}."
  in an essay haystack (the --haystack file or the built-in filler); niah_single_1 uses RULER's
  noise haystack ("The grass is green. ..."), niah_single_3 uuid values.
- niah_multikey (niah_multikey_1): 4 needles with different keys, one asked (3 distractors);
  niah_multikey_2: the haystack is made of distractor needles; niah_multikey_3: the same with uuid
  keys and values.
- niah_multivalue: one key with 4 values, all asked. niah_multiquery: 4 keys, all asked.
- vt: variable tracking, "VAR ABCDE = 12345." then "VAR FGHIJ = VAR ABCDE." ... (1 chain of 4 hops
  in noise); the answer is every variable of the queried chain.
- cwe: common-words extraction, a numbered list where 10 words appear 30 times each (fewer when the
  context is short) and the others 3 times; the answer is the 10 common words.
- fwe: frequent-words extraction, coded words drawn with Zipf counts (alpha 2); the most frequent
  "...." is noise, the answer is the next three.

NIAH needles go to sentence starts at depths in % of the haystack's tokens (the asked needles at
the cell's depth and spread after it, distractors at random depths); a vt chain starts at the cell's
depth. The prompt is BOS + instruction + context + "Question: ... Answer: {answer prefix}" with at
most `context_length` tokens (NIAH and vt: exactly).
"""
import string

import numpy as np

from lwm.eval import needle, scoring
from lwm.eval.sample import Pieces, Sample, Variant

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NIAH_INSTRUCTION = ("Some special magic {kind} are hidden within the following text. Make sure to "
                    "memorize it. I will quiz you about the {kind} afterwards.")
NIAH_NEEDLE = "One of the special magic {kind} for {key} is: {value}."
NIAH_QUESTION = "What are all the special magic {kind} for {keys} mentioned in the provided text?"
NIAH_ANSWER_PREFIX = "The special magic {kind} for {keys} mentioned in the provided text are"
VT_INSTRUCTION = ("Memorize and track the chain(s) of variable assignment hidden in the following "
                  "text.")
VT_QUESTION = "Find all variables that are assigned the value {value} in the text above."
VT_ANSWER_PREFIX = ("According to the chain(s) of variable assignment in the text above, {count} "
                    "variables are assigned the value {value}, they are:")
CWE_INSTRUCTION = ("Below is a numbered list of words. In these words, some appear more often than "
                   "others. Memorize the ones that appear most often.")
CWE_QUESTION = "What are the {count} most common words in the above list?"
CWE_ANSWER_PREFIX = "The top {count} words that appear most often in the list are:"
FWE_INSTRUCTION = ("Read the following coded text and track the frequency of each coded word. Find "
                   "the three most frequently appeared coded words.")
FWE_QUESTION = ("Do not provide any explanation. Please ignore the dots '....'. What are the three "
                "most frequently appeared words in the above coded text?")
FWE_ANSWER_PREFIX = ("According to the coded text above, the three most frequently appeared words "
                     "are:")
FWE_NOISE = "...."

# NIAH settings per task (RULER's synthetic.yaml): haystack, key and value kinds, and the counts of
# keys inserted, values per key and keys asked.
NIAH_TASKS = {
    "niah_single": dict(haystack="essay", keys="words", values="numbers", k=1, v=1, q=1),
    "niah_single_1": dict(haystack="noise", keys="words", values="numbers", k=1, v=1, q=1),
    "niah_single_2": dict(haystack="essay", keys="words", values="numbers", k=1, v=1, q=1),
    "niah_single_3": dict(haystack="essay", keys="words", values="uuids", k=1, v=1, q=1),
    "niah_multikey": dict(haystack="essay", keys="words", values="numbers", k=4, v=1, q=1),
    "niah_multikey_1": dict(haystack="essay", keys="words", values="numbers", k=4, v=1, q=1),
    "niah_multikey_2": dict(haystack="needle", keys="words", values="numbers", k=1, v=1, q=1),
    "niah_multikey_3": dict(haystack="needle", keys="uuids", values="uuids", k=1, v=1, q=1),
    "niah_multivalue": dict(haystack="essay", keys="words", values="numbers", k=1, v=4, q=1),
    "niah_multiquery": dict(haystack="essay", keys="words", values="numbers", k=4, v=1, q=4),
}
OTHER_TASKS = ("vt", "cwe", "fwe")
TEXT_TASKS = tuple(NIAH_TASKS) + OTHER_TASKS

_ADJECTIVES = ("quiet bright silver hidden ancient gentle rapid golden frozen hollow lucky "
               "humble fierce clever rusty stormy velvet brave dusty mellow noble purple").split()
_NOUNS = ("river lantern falcon meadow harbor violin compass garden pebble canyon orchard "
          "beacon thistle walrus ember glacier saddle cobalt quarry willow marble ferry").split()
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


# ------------------------------------------------------------------------------------ Drawing

def word_keys() -> list[str]:
  """Keys as RULER draws them: an adjective and a noun ("quiet-river")."""
  return [f"{a}-{n}" for a in _ADJECTIVES for n in _NOUNS]


def draw_uuids(rng: np.random.Generator, count: int) -> list[str]:
  out = set()
  while len(out) < count:
    h = "".join(f"{b:02x}" for b in rng.integers(0, 256, 16))
    out.add(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
  return sorted(out, key=lambda _: rng.random())


def draw(rng: np.random.Generator, kind: str, count: int, *, digits: int = 7, values=None) -> list:
  """`count` distinct keys or values: 'words', 'uuids' or 'numbers' (`digits` digits, or from the
  pool `values`)."""
  if kind == "words":
    pool = word_keys()
    return [pool[i] for i in rng.choice(len(pool), count, replace=False)]
  if kind == "uuids":
    return draw_uuids(rng, count)
  return needle.draw_values(rng, count, digits=digits, values=values)


def pseudo_words(rng: np.random.Generator, count: int) -> list[str]:
  """`count` distinct pronounceable words of two or three syllables ("bako", "tilune"), shuffled."""
  two = [a + b for a in _SYLLABLES for b in _SYLLABLES]
  pool = two if count <= len(two) else two + [w + s for w in two for s in _SYLLABLES[:20]]
  if count > len(pool):
    raise ValueError(f"cannot draw {count} distinct words (at most {len(pool)})")
  return [pool[i] for i in rng.choice(len(pool), count, replace=False)]


def _kind_pattern(kind: str) -> str:
  return {"numbers": scoring.NUMBER, "uuids": scoring.UUID}[kind]


def _join(items: list[str]) -> str:
  return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def answer_text(items: list[str], separator: str = ", ") -> str:
  """What follows the prompt when the answer is right: " 12, 34." (with its leading space)."""
  return " " + separator.join(items) + "."


def niah_suffix(kind: str, asked: list[str]) -> str:
  """The end of a NIAH prompt: the question and RULER's answer prefix."""
  return (f"Question: {NIAH_QUESTION.format(kind=kind, keys=_join(asked))} Answer: "
          f"{NIAH_ANSWER_PREFIX.format(kind=kind, keys=_join(asked))}")


def niah_training_example(rng, sentences: list[str], keys: list[str], values: list[str],
                          asked: int, kind: str = "numbers") -> dict:
  """A training example in the evaluation's format: the needles (values[i] for
  keys[i % len(keys)]) in order at random boundaries of `sentences`; the first `asked` keys asked.
  Returns {'prompt': instruction + context + question, 'text': the answer} (a manifest line)."""
  needles = [NIAH_NEEDLE.format(kind=kind, key=keys[i % len(keys)], value=v)
             for i, v in enumerate(values)]
  at = np.sort(rng.integers(0, len(sentences) + 1, len(needles)))
  parts, previous = [NIAH_INSTRUCTION.format(kind=kind)], 0
  for cut, sentence in zip(at, needles):
    parts += sentences[previous:cut] + [sentence]
    previous = cut
  parts += sentences[previous:] + [niah_suffix(kind, keys[:asked])]
  expected = [v for i, v in enumerate(values) if i % len(keys) < asked]
  return {"prompt": " ".join(parts), "text": answer_text(expected)}


# ------------------------------------------------------------------------------------ Haystacks

def haystack_ids(tokenizer, kind: str, min_tokens: int, *, essay: str | None, rng,
                 distractor_kind: tuple = ("words", "numbers"), exclude=(), digits: int = 7):
  """At least `min_tokens` haystack token ids: `noise` (RULER's repeated sentences), `essay` (the
  given text, or the built-in filler) or `needle` (distractor needles only)."""
  if kind == "noise":
    return needle.haystack_tokens(tokenizer, NOISE, min_tokens)
  if kind == "essay":
    text = essay or needle.synthetic_haystack(max(64, min_tokens // 8), seed=0)
    return needle.haystack_tokens(tokenizer, text, min_tokens)
  ids, total, vkind = [], 0, distractor_kind[1]
  while total < min_tokens:
    [key] = draw(rng, distractor_kind[0], 1)
    if key in exclude:
      continue
    [value] = draw(rng, vkind, 1, digits=digits)
    piece = tokenizer.encode_after_space(NIAH_NEEDLE.format(kind=vkind, key=key, value=value))
    ids.append(piece)
    total += len(piece)
  return np.concatenate([np.asarray(p, np.int32) for p in ids])[:min_tokens]


def _insert(tokenizer, pieces: Pieces, hay: np.ndarray, inserts: list, depths: list) -> tuple:
  """Adds `hay` with the sentences `inserts` at `depths` (% of hay's tokens, moved back to a
  sentence start); returns (positions of the inserts in the prompt, their actual depths)."""
  order = np.argsort(depths, kind="stable")
  cuts = needle.sentence_cuts(tokenizer, hay, [depths[i] for i in order])
  positions, actual, previous = [0] * len(inserts), [0.0] * len(inserts), 0
  for i, cut in zip(order, cuts):
    if cut > previous:
      pieces.add(ids=hay[previous:cut])
    positions[i] = pieces.add(inserts[i])
    actual[i] = 100.0 * cut / len(hay)
    previous = cut
  pieces.add(ids=hay[previous:])
  return positions, actual


def _hay_budget(tokenizer, context_length: int, fixed_texts: list[str], bos: bool = True) -> int:
  # The first text opens the prompt (encoded as it is), the others follow a space (see Pieces).
  used = (len(tokenizer.prefix_ids) if bos else 0) + len(
      tokenizer.encode(fixed_texts[0], add_special_tokens=False)) + sum(
      len(tokenizer.encode_after_space(t)) for t in fixed_texts[1:])
  budget = context_length - used
  if budget < 1:
    raise ValueError(f"context_length={context_length} leaves no room for a haystack: the "
                     f"instruction, needles and question take {used} tokens")
  return budget


# ------------------------------------------------------------------------------------ NIAH

def niah(tokenizer, rng, context_length: int, depth: float, *, task: str = "niah_single",
         essay: str | None = None, digits: int = 7, values=None) -> Sample:
  """A NIAH sample of `task` (see NIAH_TASKS) with exactly `context_length` tokens."""
  if not 0 <= depth <= 100:
    raise ValueError(f"depth={depth} must be a percentage in [0, 100]")
  s = NIAH_TASKS[task]
  kind = s["values"]
  keys = draw(rng, s["keys"], s["k"])
  vals = draw(rng, kind, s["k"] * s["v"], digits=digits,
              values=values if kind == "numbers" else None)
  needles = [(keys[i], vals[i * s["v"] + j]) for i in range(s["k"]) for j in range(s["v"])]
  asked = keys[:s["q"]]
  expected = [v for k, v in needles if k in asked]
  sentences = [NIAH_NEEDLE.format(kind=kind, key=k, value=v) for k, v in needles]
  asked_count = len(expected)
  distractors = len(needles) - asked_count
  depths = needle.needle_depths(depth, asked_count) + list(rng.uniform(0, 100, distractors))
  instruction = NIAH_INSTRUCTION.format(kind=kind)
  suffix = niah_suffix(kind, asked)
  budget = _hay_budget(tokenizer, context_length, [instruction, suffix] + sentences)
  hay = haystack_ids(tokenizer, s["haystack"], budget, essay=essay, rng=rng,
                     distractor_kind=(s["keys"], kind), exclude=set(keys), digits=digits)
  pieces = Pieces(tokenizer)
  pieces.add(instruction)
  positions, actual = _insert(tokenizer, pieces, hay, sentences, depths)
  pieces.add(suffix)
  answer = answer_text(expected)
  info = {"keys": keys, "asked": asked, "values": vals, "needle_positions": positions,
          "needle_depths": actual, "haystack": s["haystack"]}
  return Sample(task, [Variant(pieces.tokens(), None, expected, answer)], _kind_pattern(kind),
                depth=actual[0], info=info, text=pieces.text())


# ------------------------------------------------------------------------------------ vt

def variable_names(rng, count: int) -> list[str]:
  names = set()
  while len(names) < count:
    names.add("".join(rng.choice(list(string.ascii_uppercase), 5)))
  return sorted(names, key=lambda _: rng.random())


def variable_tracking(tokenizer, rng, context_length: int, depth: float, *, num_chains: int = 1,
                      num_hops: int = 4, digits: int = 5, values=None) -> Sample:
  """Chains of `num_hops` assignments in noise; the first chain is asked. Statements go hop by hop
  (every chain's first, then every chain's second, ...) from `depth` to the end."""
  names = variable_names(rng, num_chains * (num_hops + 1))
  chains = [names[c * (num_hops + 1):(c + 1) * (num_hops + 1)] for c in range(num_chains)]
  vals = needle.draw_values(rng, num_chains, digits=digits, values=values)
  statements = []
  for hop in range(num_hops + 1):
    for chain, value in zip(chains, vals):
      source = value if hop == 0 else f"VAR {chain[hop - 1]}"
      statements.append(f"VAR {chain[hop]} = {source}.")
  suffix = (f"Question: {VT_QUESTION.format(value=vals[0])} Answer: "
            f"{VT_ANSWER_PREFIX.format(count=num_hops + 1, value=vals[0])}")
  budget = _hay_budget(tokenizer, context_length, [VT_INSTRUCTION, suffix] + statements)
  hay = haystack_ids(tokenizer, "noise", budget, essay=None, rng=rng)
  pieces = Pieces(tokenizer)
  pieces.add(VT_INSTRUCTION)
  positions, actual = _insert(tokenizer, pieces, hay, statements,
                              needle.needle_depths(depth, len(statements)))
  pieces.add(suffix)
  expected = chains[0]
  info = {"chains": chains, "values": vals, "statement_positions": positions,
          "statement_depths": actual}
  return Sample("vt", [Variant(pieces.tokens(), None, expected, answer_text(expected, " "))],
                r"[A-Z]{5}", depth=actual[0], info=info, text=pieces.text())


# ------------------------------------------------------------------------------------ cwe, fwe

def _fit(count_tokens, low: int, high: int, budget: int) -> int:
  """The largest n in [low, high] with count_tokens(n) <= budget (count_tokens non-decreasing);
  low - 1 when none."""
  while low <= high:
    mid = (low + high) // 2
    if count_tokens(mid) <= budget:
      low = mid + 1
    else:
      high = mid - 1
  return high


def common_words(tokenizer, rng, context_length: int, *, num_common: int = 10,
                 freq_common: int = 30, freq_uncommon: int = 3) -> Sample:
  """A numbered list of words: `num_common` words `freq_common` times each, the rest
  `freq_uncommon` times, as many as fit. When the common words would take more than half the
  context, freq_common is lowered (to freq_uncommon + 2 at least), then num_common (info records
  both)."""
  budget = _hay_budget(tokenizer, context_length, [CWE_INSTRUCTION, CWE_QUESTION,
                                                   CWE_ANSWER_PREFIX, "Question: Answer:"])
  max_words = budget // 2 + num_common
  words = pseudo_words(rng, max_words)
  cost = np.asarray([len(tokenizer.encode_after_space(w)) for w in words])
  number_cost = np.cumsum([len(tokenizer.encode_after_space(f"{i}."))
                           for i in range(1, 2 * budget + 2)])
  per_unit = cost[:num_common].mean() + number_cost[0]
  freq_common = max(freq_uncommon + 2, min(freq_common, int(budget / 2 / num_common / per_unit)))
  num_common = max(1, min(num_common, int(budget / 2 / freq_common / per_unit)))
  common_cost = int(cost[:num_common].sum())
  suffix = (f"Question: {CWE_QUESTION.format(count=num_common)} Answer: "
            f"{CWE_ANSWER_PREFIX.format(count=num_common)}")

  def tokens(n):  # list length with n uncommon words
    items = num_common * freq_common + n * freq_uncommon
    if items > len(number_cost):
      return budget + 1
    return (common_cost * freq_common + int(cost[num_common:num_common + n].sum()) * freq_uncommon
            + int(number_cost[items - 1]))

  n = _fit(tokens, 0, len(words) - num_common, budget)
  if n < 0:
    raise ValueError(f"context_length={context_length} is too short for {num_common} common words "
                     f"{freq_common} times each")
  listed = words[:num_common] * freq_common + words[num_common:num_common + n] * freq_uncommon
  listed = [listed[i] for i in rng.permutation(len(listed))]
  pieces = Pieces(tokenizer)
  pieces.add(CWE_INSTRUCTION)
  for i, word in enumerate(listed, 1):
    pieces.add(f"{i}.")
    pieces.add(word)
  pieces.add(suffix)
  expected = words[:num_common]
  info = {"num_common": num_common, "freq_common": freq_common, "freq_uncommon": freq_uncommon,
          "uncommon_words": n}
  return Sample("cwe", [Variant(pieces.tokens(), None, expected, answer_text(expected))],
                scoring.WORD, info=info, text=pieces.text())


def zipf_counts(num_words: int, vocab_size: int, alpha: float) -> np.ndarray:
  """floor(num_words * k^-alpha / zeta(alpha)) for ranks k = 1..vocab_size."""
  ranks = np.arange(1, vocab_size + 1, dtype=np.float64)
  zeta = float(np.sum(np.arange(1, 1_000_000, dtype=np.float64) ** -alpha))
  return np.floor(num_words * ranks ** -alpha / zeta).astype(np.int64)


def frequent_words(tokenizer, rng, context_length: int, *, alpha: float = 2.0,
                   vocab_size: int = 2000, word_length: int = 6) -> Sample:
  """Coded words (`word_length` random letters) with Zipf counts, as many as fit; rank 1 is the
  noise "....", ranks 2-4 are the answer (rank 4 must be rarer than rank 3, or the context is too
  short)."""
  vocab = set()
  while len(vocab) < vocab_size:
    vocab.add("".join(rng.choice(list(string.ascii_lowercase), word_length)))
  vocab = [FWE_NOISE] + sorted(vocab, key=lambda _: rng.random())[:vocab_size - 1]
  suffix = f"Question: {FWE_QUESTION} Answer: {FWE_ANSWER_PREFIX}"
  budget = _hay_budget(tokenizer, context_length, [FWE_INSTRUCTION, suffix])
  cost = np.asarray([len(tokenizer.encode_after_space(w)) for w in vocab])
  n = _fit(lambda n: int(zipf_counts(n, vocab_size, alpha) @ cost), 1, budget * 4, budget)
  counts = zipf_counts(n, vocab_size, alpha)
  if not counts[3] > counts[4]:
    raise ValueError(f"context_length={context_length} is too short for frequent-words extraction: "
                     f"the top counts {counts[:5].tolist()} do not separate the three answers")
  listed = [w for w, c in zip(vocab, counts) for _ in range(c)]
  listed = [listed[i] for i in rng.permutation(len(listed))]
  pieces = Pieces(tokenizer)
  pieces.add(FWE_INSTRUCTION)
  pieces.add(" ".join(listed), ids=np.concatenate([tokenizer.encode_after_space(w)
                                                   for w in listed]))
  pieces.add(suffix)
  expected = vocab[1:4]
  info = {"counts": counts[:5].tolist(), "words": len(listed), "word_length": word_length}
  return Sample("fwe", [Variant(pieces.tokens(), None, expected, answer_text(expected))],
                rf"[a-z]{{{word_length}}}", info=info, text=pieces.text())


# ------------------------------------------------------------------------------------ Dispatch

def make_text_sample(task: str, tokenizer, rng, context_length: int, depth: float = 50.0, *,
                     essay: str | None = None, digits: int = 7, values=None) -> Sample:
  """A sample of any text task (TEXT_TASKS); `depth` is ignored by cwe and fwe."""
  if task in NIAH_TASKS:
    return niah(tokenizer, rng, context_length, depth, task=task, essay=essay, digits=digits,
                values=values)
  if task == "vt":
    return variable_tracking(tokenizer, rng, context_length, depth, values=values,
                             digits=min(digits, 5) if values is None else digits)
  if task == "cwe":
    return common_words(tokenizer, rng, context_length)
  if task == "fwe":  # shorter coded words where 6 letters leave too few words to count
    for word_length in (6, 5, 4, 3, 2):
      try:
        return frequent_words(tokenizer, rng, context_length, word_length=word_length)
      except ValueError:
        if word_length == 2:
          raise
  raise ValueError(f"unknown text task {task!r}; choose from {', '.join(TEXT_TASKS)}")


def uses_depth(task: str) -> bool:
  return task not in ("cwe", "fwe")
