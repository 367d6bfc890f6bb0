"""RULER's 13 tasks as NVIDIA/RULER writes them: its templates, settings and generators
(scripts/data/synthetic/{constants.py, niah.py, variable_tracking.py, common_words_extraction.py,
freq_words_extraction.py, qa.py}, scripts/synthetic.yaml), written anew. This module holds the
text of one sample given a haystack size; `ruler_build` fits the size to a length in tokens.

  text, outputs = niah_text(rng, 500, template, TASKS["niah_single_2"][1], data)

As RULER does, a task's full template is the model template around the task template, then the
answer prefix (`full_template`); the generators fill it, and the answer prefix is cut off the end
afterwards (`ruler_build`). RULER's fixed-seed shuffles (needles, cwe's list, fwe's words, qa's
documents: `random.Random(seed).shuffle`) are kept: with the same seed the common words of cwe sit
at the same places in every sample, as in RULER.
"""
import dataclasses
import random
import string
import uuid

import numpy as np

from lwm.eval import chat_format, ruler_data

# scripts/data/synthetic/constants.py, verbatim: (template, answer prefix, tokens_to_generate).
TEMPLATES = {
    "niah": (
        "Some special magic {type_needle_v} are hidden within the following text. Make sure to "
        "memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are "
        "all the special magic {type_needle_v} for {query} mentioned in the provided text?",
        " The special magic {type_needle_v} for {query} mentioned in the provided text are",
        128),
    "variable_tracking": (
        "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
        "{context}\nQuestion: Find all variables that are assigned the value {query} in the text "
        "above.",
        " Answer: According to the chain(s) of variable assignment in the text above, {num_v} "
        "variables are assigned the value {query}, they are: ",
        30),
    "common_words_extraction": (
        "Below is a numbered list of words. In these words, some appear more often than others. "
        "Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most "
        "common words in the above list?",
        " Answer: The top 10 words that appear most often in the list are:",
        120),
    "freq_words_extraction": (
        "Read the following coded text and track the frequency of each coded word. Find the three "
        "most frequently appeared coded words. {context}\nQuestion: Do not provide any "
        "explanation. Please ignore the dots '....'. What are the three most frequently appeared "
        "words in the above coded text?",
        " Answer: According to the coded text above, the three most frequently appeared words "
        "are:",
        50),
    "qa": (
        "Answer the question based on the given documents. Only give me the answer and do not "
        "output any other words.\n\nThe following are given documents.\n\n{context}\n\nAnswer "
        "the question based on the given documents. Only give me the answer and do not output "
        "any other words.\n\nQuestion: {query}",
        " Answer:",
        32),
}
# scripts/eval/synthetic/constants.py: the metric of each family.
METRICS = {"niah": "string_match_all", "variable_tracking": "string_match_all",
           "common_words_extraction": "string_match_all",
           "freq_words_extraction": "string_match_all", "qa": "string_match_part"}


def _niah(haystack, keys, values, k=1, v=1, q=1):
  return ("niah", dict(type_haystack=haystack, type_needle_k=keys, type_needle_v=values,
                       num_needle_k=k, num_needle_v=v, num_needle_q=q))


# scripts/synthetic.yaml, in scripts/config_tasks.sh's order (the 13 tasks RULER averages).
TASKS = {
    "niah_single_1": _niah("noise", "words", "numbers"),
    "niah_single_2": _niah("essay", "words", "numbers"),
    "niah_single_3": _niah("essay", "words", "uuids"),
    "niah_multikey_1": _niah("essay", "words", "numbers", k=4),
    "niah_multikey_2": _niah("needle", "words", "numbers"),
    "niah_multikey_3": _niah("needle", "uuids", "uuids"),
    "niah_multivalue": _niah("essay", "words", "numbers", v=4),
    "niah_multiquery": _niah("essay", "words", "numbers", q=4),
    "vt": ("variable_tracking", dict(type_haystack="noise", num_chains=1, num_hops=4)),
    "cwe": ("common_words_extraction", dict(freq_cw=30, freq_ucw=3, num_cw=10)),
    "fwe": ("freq_words_extraction", dict(alpha=2.0)),
    "qa_1": ("qa", dict(dataset="squad")),
    "qa_2": ("qa", dict(dataset="hotpotqa")),
}
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
DOCUMENT_PROMPT = "Document {i}:\n{document}"
DEPTHS = [int(d) for d in np.round(np.linspace(0, 100, num=40, endpoint=True))]  # % of sentences


@dataclasses.dataclass
class TaskData:
  """What the generators read: the run's seed (RULER's fixed-seed shuffles), the essay's words
  (None: not given), qa's {dataset: (questions, documents)}, the English word lists."""
  seed: int = 42
  essay_words: list | None = None
  qa: dict = dataclasses.field(default_factory=dict)
  nouns: tuple = ()
  adjectives: tuple = ()
  cwe_words: list = dataclasses.field(default_factory=list)  # shuffled with the seed
  extra_words: list = dataclasses.field(default_factory=list)  # cwe when those are too few

  @classmethod
  def english(cls, seed: int = 42, **kw) -> "TaskData":
    """With wonderwords' lists as RULER uses them: keys from adjectives x nouns, cwe's words from
    nouns + adjectives + verbs, sorted, deduplicated and shuffled with the seed."""
    lists = ruler_data.wonderwords_lists()
    words = sorted(set(lists["nouns"] + lists["adjectives"] + lists["verbs"]))
    random.Random(seed).shuffle(words)
    return cls(seed=seed, nouns=tuple(sorted(set(lists["nouns"]))),
               adjectives=tuple(sorted(set(lists["adjectives"]))), cwe_words=words, **kw)


# ------------------------------------------------------------------------------------ Templates

def singular(template: str) -> str:
  """RULER's rewrite of the NIAH template when one value is asked, applied (as RULER applies it)
  to the whole template, model template included."""
  for plural, one in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
    template = template.replace(plural, one)
  return template


def full_template(family: str, format_prompt=None) -> str:
  """Model template around the task template, then the answer prefix (RULER's prepare.py); the
  model template's own braces are escaped so that only the task's fields are filled."""
  task, prefix, _ = TEMPLATES[family]
  before, after = chat_format.split_template(format_prompt or (lambda t: t))
  escape = lambda s: s.replace("{", "{{").replace("}", "}}")
  return escape(before) + task + escape(after) + prefix


def answer_prefix_marker(family: str) -> str:
  """RULER finds the answer prefix by its first 10 characters (the last occurrence)."""
  return TEMPLATES[family][1][:10]


# ------------------------------------------------------------------------------------ Values

def random_number(rng: random.Random, digits: int = 7) -> str:
  return str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))


def random_uuid(rng: random.Random) -> str:
  return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def random_value(rng: random.Random, kind: str, data: TaskData) -> str:
  """'numbers' (7 digits), 'words' ("adjective-noun") or 'uuids' (uuid4)."""
  if kind == "numbers":
    return random_number(rng)
  if kind == "words":
    return f"{rng.choice(data.adjectives)}-{rng.choice(data.nouns)}"
  if kind == "uuids":
    return random_uuid(rng)
  raise ValueError(f"needle kind {kind!r} is not one of numbers, words, uuids")


# ------------------------------------------------------------------------------------ niah

def _essay_context(rng, words: list, size: int, inserts: list[str]) -> str:
  """`size` essay words (repeated when too few), the inserts between sentences at depths drawn
  from DEPTHS, all joined by spaces."""
  text = " ".join((words * -(-size // len(words)))[:size])
  sentences = ruler_data.split_sentences(text)
  cuts = sorted(int(len(sentences) * d / 100) for d in rng.sample(DEPTHS, len(inserts)))
  bounds, parts = [0] + cuts + [len(sentences)], []
  for i in range(1, len(bounds)):
    parts.append(" ".join(sentences[bounds[i - 1]:bounds[i]]))
    if i - 1 < len(inserts):
      parts.append(inserts[i - 1])
  return " ".join(parts)


def niah_text(rng: random.Random, size: int, template: str, args: dict,
              data: TaskData) -> tuple[str, list]:
  """A NIAH sample with `size` haystack units (essay words, noise sentences or distractor
  needles); `template` is `full_template("niah")`, made singular here when one value is asked."""
  kind = args["type_needle_v"]
  num_keys = max(args["num_needle_k"], args["num_needle_q"])
  keys, values, needles = [], [], []
  for _ in range(num_keys):
    keys.append(random_value(rng, args["type_needle_k"], data))
    values.append([])
    for _ in range(args["num_needle_v"]):
      values[-1].append(random_value(rng, kind, data))
      needles.append(NEEDLE.format(type_needle_v=kind, key=keys[-1], value=values[-1][-1]))
  random.Random(data.seed).shuffle(needles)
  haystack = args["type_haystack"]
  if haystack == "essay":
    if not data.essay_words:
      raise ValueError("an essay haystack needs the essays' text (--essays)")
    context = _essay_context(rng, data.essay_words, size, needles)
  else:
    if haystack == "noise":
      sentences = [NOISE] * size
    else:  # 'needle': a haystack of distractor needles
      sentences = [NEEDLE.format(type_needle_v=kind,
                                 key=random_value(rng, args["type_needle_k"], data),
                                 value=random_value(rng, kind, data)) for _ in range(size)]
    for index, needle in zip(sorted(rng.sample(range(size), len(needles)), reverse=True),
                             needles):
      sentences.insert(index, needle)
    context = "\n".join(sentences)
  asked = rng.sample(range(num_keys), args["num_needle_q"])
  queries = [keys[i] for i in asked]
  answers = [v for i in asked for v in values[i]]
  query = (", ".join(queries[:-1]) + ", and " + queries[-1]) if len(queries) > 1 else queries[0]
  if args["num_needle_q"] * args["num_needle_v"] == 1:
    template, kind = singular(template), kind[:-1]
  return template.format(type_needle_v=kind, context=context, query=query), answers


# ------------------------------------------------------------------------------------ vt

def variable_chains(rng: random.Random, num_chains: int, num_hops: int, one_shot: bool = False):
  """(names per chain, statements per chain): "VAR A = 12345" then "VAR B = VAR A " ... (RULER's
  trailing space); the one-shot example's names have 3 letters and its value is 12345."""
  letters = 3 if one_shot else 5
  names = []
  while len(names) < num_chains * (num_hops + 1):
    name = "".join(rng.choices(string.ascii_uppercase, k=letters))
    if name not in names:
      names.append(name)
  chains, statements = [], []
  for c in range(num_chains):
    chain = names[c * (num_hops + 1):(c + 1) * (num_hops + 1)]
    value = "12345" if one_shot else str(rng.randint(10000, 99998))  # numpy's [10000, 99999)
    chains.append(chain)
    statements.append([f"VAR {chain[0]} = {value}"] +
                      [f"VAR {chain[j + 1]} = VAR {chain[j]} " for j in range(num_hops)])
  return chains, statements


def vt_text(rng: random.Random, size: int, template: str, args: dict,
            one_shot: bool = False) -> tuple[str, list]:
  """Chains hidden in `size` noise sentences, each statement at a random sorted place."""
  chains, statements = variable_chains(rng, args["num_chains"], args["num_hops"], one_shot)
  value = statements[0][0].split("=")[-1].strip()
  sentences = [NOISE] * size
  for chain in statements:
    places = sorted(rng.sample(range(len(sentences)), len(chain)))
    for j, (place, statement) in enumerate(zip(places, chain)):
      sentences.insert(place + j, statement)
  context = "\n".join(sentences).replace(". \n", ".\n")
  return template.format(context=context, query=value, num_v=args["num_hops"] + 1), chains[0]


def randomize_one_shot(rng: random.Random, example: str, num_hops: int) -> str:
  """RULER's randomize_icl: the example's answer names and its value 12345 drawn anew."""
  for name in example.strip().split()[-num_hops - 1:]:
    example = example.replace(name, "".join(rng.choices(string.ascii_uppercase, k=len(name))))
  return example.replace("12345", str(rng.randint(10000, 99998)))


# ------------------------------------------------------------------------------------ cwe

def _numbered(words: list[str]) -> str:
  return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def cwe_example(rng: random.Random, data: TaskData, num_words: int, common_repeats: int,
                uncommon_repeats: int, num_common: int) -> tuple[str, list]:
  """(numbered list, the common words): `num_words` distinct words, the first `num_common`
  repeated `common_repeats` times, the others `uncommon_repeats` times."""
  pool = data.cwe_words if num_words <= len(data.cwe_words) else data.extra_words
  if num_words > len(pool):
    raise ValueError(f"cwe needs {num_words} distinct words here and the word lists hold "
                     f"{max(len(data.cwe_words), len(data.extra_words))} (RULER switches to its "
                     "own english_words.json beyond wonderwords' lists): pass --cwe-words FILE")
  chosen = rng.sample(pool, num_words)
  common, uncommon = chosen[:num_common], chosen[num_common:]
  listed = common * common_repeats + uncommon * uncommon_repeats
  random.Random(data.seed).shuffle(listed)
  return _numbered(listed), common


def cwe_text(rng: random.Random, size: int, template: str, args: dict, data: TaskData,
             max_seq_length: int) -> tuple[str, list]:
  """One worked example, then the question over `size` words. Below 4,096 tokens the example has
  20 words (3/1 repeats) and the question 6/1; from 4,096 on 40 words (10/3) and 30/3."""
  num_common = args["num_cw"]
  if max_seq_length < 4096:
    shot = cwe_example(rng, data, 20, 3, 1, num_common)
    context, answer = cwe_example(rng, data, size, 6, 1, num_common)
  else:
    shot = cwe_example(rng, data, 40, 10, 3, num_common)
    context, answer = cwe_example(rng, data, size, args["freq_cw"], args["freq_ucw"], num_common)
  example = template.format(context=shot[0], query="") + " " + _numbered(shot[1])
  return example + "\n" + template.format(context=context, query=""), answer


# ------------------------------------------------------------------------------------ fwe

def zeta(alpha: float, terms: int = 1000) -> float:
  """Riemann zeta for alpha > 1: a partial sum and its Euler-Maclaurin tail (error ~1e-15)."""
  if alpha <= 1:
    raise ValueError(f"zeta(alpha) needs alpha > 1, got {alpha}")
  k = np.arange(1, terms, dtype=np.float64)
  n = float(terms)
  return float(np.sum(k ** -alpha) + n ** (1 - alpha) / (alpha - 1) + 0.5 * n ** -alpha +
               alpha * n ** (-alpha - 1) / 12)


def fwe_vocab(rng: random.Random, vocab_size: int, seed: int, word_length: int = 6) -> list:
  """`vocab_size` distinct coded words in a seed-fixed order, the first replaced by '...'."""
  vocab = set()
  while len(vocab) < vocab_size:
    vocab.add("".join(rng.choices(string.ascii_lowercase, k=word_length)))
  vocab = sorted(vocab)
  random.Random(seed).shuffle(vocab)
  vocab[0] = "..."  # the top-ranked word is noise
  return vocab


def fwe_text(vocab: list, num_words: int, template: str, alpha: float,
             seed: int) -> tuple[str, list]:
  """Word of rank k repeated floor(num_words k^-alpha / zeta(alpha)) times, shuffled with the
  seed; the answer is ranks 2-4."""
  ranks = np.arange(1, len(vocab) + 1, dtype=np.float64)
  counts = (num_words * ranks ** -alpha / zeta(alpha)).astype(int)
  words = [w for w, c in zip(vocab, counts) for _ in range(c)]
  random.Random(seed).shuffle(words)
  return template.format(context=" ".join(words), query=""), vocab[1:4]


# ------------------------------------------------------------------------------------ qa

def qa_text(rng: random.Random, index: int, num_docs: int, template: str, questions: list,
            docs: list, seed: int) -> tuple[str, list]:
  """Question `index` over `num_docs` documents: its own, then its article's others (SQuAD), then
  random ones; in a seed-fixed order."""
  if index >= len(questions):
    raise ValueError(f"sample {index} needs question {index}, and the file holds "
                     f"{len(questions)} answerable questions: lower --samples")
  q = questions[index]
  own, more = q["context"], q.get("more_context", [])
  if num_docs < len(docs):
    if num_docs - len(own) > len(more):
      taken = set(own + more)
      others = [i for i in range(len(docs)) if i not in taken]
      chosen = own + more + rng.sample(others, num_docs - len(own) - len(more))
    else:
      chosen = own + rng.sample(more, max(0, num_docs - len(own)))
    chosen = [docs[i] for i in chosen]
  else:
    chosen = (docs * -(-num_docs // len(docs)))[:num_docs]
  random.Random(seed).shuffle(chosen)
  context = "\n\n".join(DOCUMENT_PROMPT.format(i=i + 1, document=d) for i, d in enumerate(chosen))
  return template.format(context=context, query=q["query"]), q["outputs"]
