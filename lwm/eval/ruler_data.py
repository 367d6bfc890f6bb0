"""The data RULER's tasks read, from files the user gives (nothing is downloaded), parsed as those
files are published and as NVIDIA/RULER reads them (scripts/data/synthetic/{niah,qa}.py).

- essays: Paul Graham's essays (RULER's json/PaulGrahamEssays_URLs.txt lists them), either a
  directory of .txt files (concatenated in name order, as RULER's download script does) or
  RULER's PaulGrahamEssays.json ({"text": ...}). `essay_words` splits on whitespace as RULER does.
- SQuAD v2.0 dev (dev-v2.0.json): {"data": [{"paragraphs": [{"context", "qas": [{"question",
  "answers": [{"text"}], "is_impossible"}]}]}]}; unanswerable questions are left out.
- HotpotQA distractor dev (hotpot_dev_distractor_v1.json): [{"question", "answer",
  "context": [[title, [sentence, ...]], ...]}].
- English words: the noun, adjective and verb lists of the `wonderwords` package (PyPI, MIT),
  the lists RULER draws NIAH keys ("adjective-noun") and cwe's words from.
"""
import functools
import glob
import json
import os
import re

ESSAY_SOURCE = ("Paul Graham's essays as RULER uses them: fetch the URLs of NVIDIA/RULER's "
                "scripts/data/synthetic/json/PaulGrahamEssays_URLs.txt (its "
                "download_paulgraham_essay.py) and pass the folder of .txt files or the "
                "PaulGrahamEssays.json it writes")


def read_essays(path: str) -> str:
  """The essays' text: a directory of .txt files (sorted by name, concatenated) or a JSON file
  with a "text" field (RULER's PaulGrahamEssays.json)."""
  if os.path.isdir(path):
    files = sorted(glob.glob(os.path.join(path, "*.txt")))
    if not files:
      raise ValueError(f"--essays {path!r} holds no .txt files; {ESSAY_SOURCE}")
    text = ""
    for name in files:
      with open(name, encoding="utf-8") as f:
        text += f.read()
    return text
  if path.endswith(".json"):
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
      raise ValueError(f"--essays {path!r} must be a JSON object with a 'text' string "
                       "(RULER's PaulGrahamEssays.json)")
    return data["text"]
  raise ValueError(f"--essays {path!r} must be a directory of .txt files or a .json file; "
                   f"{ESSAY_SOURCE}")


def essay_words(text: str) -> list[str]:
  """The haystack's words: whitespace runs collapsed to one space, split on it (RULER's)."""
  return re.sub(r"\s+", " ", text).split(" ")


def split_sentences(text: str) -> list[str]:
  """Sentences of single-spaced text: a break after '.', '!' or '?' (and a closing quote or
  bracket) and a space, unless a lower-case letter follows. RULER uses NLTK's punkt, which also
  keeps abbreviations such as "Mr." whole; only where needles may go differs, the text is the same
  once joined by spaces."""
  parts = re.split(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?![a-z])", text.strip())
  return [p for p in parts if p]


# ------------------------------------------------------------------------------------ QA

def read_squad(path: str) -> tuple[list[dict], list[str]]:
  """(questions, documents) of a SQuAD v2.0 file. A question is {'query', 'outputs' (every
  reference answer), 'context' (its paragraph's index), 'more_context' (the other paragraphs of
  its article)}; documents are the distinct paragraphs, sorted."""
  data = _load_json(path, "--squad", dict)
  try:
    articles = data["data"]
    docs = sorted({p["context"] for d in articles for p in d["paragraphs"]})
    index = {c: i for i, c in enumerate(docs)}
    questions = []
    for d in articles:
      article = [index[p["context"]] for p in d["paragraphs"]]
      for p in d["paragraphs"]:
        for qa in p["qas"]:
          if qa.get("is_impossible", False):
            continue
          questions.append({"query": qa["question"],
                            "outputs": [a["text"] for a in qa["answers"]],
                            "context": [index[p["context"]]],
                            "more_context": [i for i in article if i != index[p["context"]]]})
  except (KeyError, TypeError) as e:
    raise ValueError(f"--squad {path!r} is not in SQuAD v2.0's layout (data -> paragraphs -> "
                     f"context, qas -> question, answers -> text): missing {e}") from None
  return questions, docs


def read_hotpotqa(path: str) -> tuple[list[dict], list[str]]:
  """(questions, documents) of a HotpotQA distractor file. Documents are "title\\nsentences"
  (sentences joined without spaces, as RULER joins them), distinct and sorted; a question's
  context is its ten paragraphs."""
  data = _load_json(path, "--hotpotqa", list)
  doc = lambda title, sentences: f"{title}\n{''.join(sentences)}"
  try:
    docs = sorted({doc(t, s) for d in data for t, s in d["context"]})
    index = {c: i for i, c in enumerate(docs)}
    questions = [{"query": d["question"], "outputs": [d["answer"]],
                  "context": [index[doc(t, s)] for t, s in d["context"]]} for d in data]
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"--hotpotqa {path!r} is not in HotpotQA's layout (a list of question, "
                     f"answer, context: [[title, [sentences]]]): {e!r}") from None
  return questions, docs


def _load_json(path: str, flag: str, kind: type):
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  if not isinstance(data, kind):
    raise ValueError(f"{flag} {path!r} must hold a JSON {kind.__name__}, got "
                     f"{type(data).__name__}")
  return data


# ------------------------------------------------------------------------------------ Words

@functools.cache
def wonderwords_lists() -> dict[str, tuple[str, ...]]:
  """{'nouns', 'adjectives', 'verbs'}: wonderwords' lists as RULER reads them (lines, stripped)."""
  try:
    from importlib import resources
    assets = resources.files("wonderwords") / "assets"
  except ModuleNotFoundError:
    raise ModuleNotFoundError("RULER's keys and cwe words come from the `wonderwords` package's "
                              "word lists: pip install wonderwords") from None
  read = lambda name: tuple(w.rstrip() for w in (assets / name).read_text().splitlines())
  return {"nouns": read("nounlist.txt"), "adjectives": read("adjectivelist.txt"),
          "verbs": read("verblist.txt")}


def read_word_list(path: str) -> list[str]:
  """A file of words, one a line (cwe's words where wonderwords' lists are too few)."""
  with open(path, encoding="utf-8") as f:
    words = sorted({w.strip() for w in f if w.strip()})
  if not words:
    raise ValueError(f"--cwe-words {path!r} holds no words")
  return words
