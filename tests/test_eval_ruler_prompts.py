"""RULER's tasks as RULER writes them: every prompt, with a fixed seed, has the structure of RULER's
generator (instruction, context separators, question, answer prefix), checked against strings
copied from NVIDIA/RULER's scripts/data/synthetic/constants.py (and template.py's lwm-chat row);
the answers are re-derived from the prompt's text with regular expressions. Also RULER's metrics on
hand-computed cases and the readers of SQuAD, HotpotQA and essay files written here."""
import collections
import json
import random
import re

import pytest

from lwm.eval import ruler_build, ruler_data, ruler_tasks, scoring

# NVIDIA/RULER scripts/data/synthetic/constants.py, copied: (template, answer prefix).
RULER = {
    "niah": ("Some special magic {type_needle_v} are hidden within the following text. Make sure "
             "to memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
             "What are all the special magic {type_needle_v} for {query} mentioned in the provided "
             "text?",
             " The special magic {type_needle_v} for {query} mentioned in the provided text are"),
    "vt": ("Memorize and track the chain(s) of variable assignment hidden in the following text."
           "\n\n{context}\nQuestion: Find all variables that are assigned the value {query} in the "
           "text above.",
           " Answer: According to the chain(s) of variable assignment in the text above, {num_v} "
           "variables are assigned the value {query}, they are: "),
    "cwe": ("Below is a numbered list of words. In these words, some appear more often than "
            "others. Memorize the ones that appear most often.\n{context}\nQuestion: What are the "
            "10 most common words in the above list?",
            " Answer: The top 10 words that appear most often in the list are:"),
    "fwe": ("Read the following coded text and track the frequency of each coded word. Find the "
            "three most frequently appeared coded words. {context}\nQuestion: Do not provide any "
            "explanation. Please ignore the dots '....'. What are the three most frequently "
            "appeared words in the above coded text?",
            " Answer: According to the coded text above, the three most frequently appeared words "
            "are:"),
    "qa": ("Answer the question based on the given documents. Only give me the answer and do not "
           "output any other words.\n\nThe following are given documents.\n\n{context}\n\nAnswer "
           "the question based on the given documents. Only give me the answer and do not output "
           "any other words.\n\nQuestion: {query}",
           " Answer:"),
}
# RULER's singular rewrite of the NIAH template, written out by hand.
NIAH_SINGULAR = ("A special magic {type_needle_v} is hidden within the following text. Make sure "
                 "to memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}"
                 "\nWhat is the special magic {type_needle_v} for {query} mentioned in the "
                 "provided text?",
                 " The special magic {type_needle_v} for {query} mentioned in the provided text "
                 "is")
LWM_CHAT = "You are a helpful assistant. USER: {task_template} ASSISTANT: "  # template.py
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
ESSAY = ("The best essays are short. Mr. Graham wrote many of them! Do you read them? "
         "Startups grow fast when they make something people want. ") * 30
UUID4 = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
WORDS = lambda text: len(text.split())  # a tokenizer that counts whitespace words


def pattern(template: str, **fixed) -> re.Pattern:
  """A template as a regular expression: each {field} a named group (or the fixed text)."""
  out, seen = "", set()
  for literal, field, _, _ in __import__("string").Formatter().parse(template):
    out += re.escape(literal)
    if field is None:
      continue
    if field in fixed:
      out += re.escape(fixed[field])
    elif field in seen:
      out += f"(?P={field})"
    else:
      out += f"(?P<{field}>.*?)" if field != "context" else f"(?P<{field}>.*)"
      seen.add(field)
  return re.compile(out, re.S)


def split(match_template, sample, **fixed):
  """The fields of a sample's full text (input + answer prefix) under RULER's template."""
  task, prefix = match_template
  m = pattern(task + prefix, **fixed).fullmatch(sample.input + sample.answer_prefix)
  assert m, (sample.input[:300], sample.answer_prefix)
  assert sample.answer_prefix == prefix.format(**{**m.groupdict(), **fixed})
  return m.groupdict()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("qa")
  squad, hotpot = write_squad(root / "squad.json"), write_hotpotqa(root / "hotpot.json")
  return ruler_tasks.TaskData.english(
      seed=42, essay_words=ruler_data.essay_words(ESSAY),
      qa={"squad": ruler_data.read_squad(squad), "hotpotqa": ruler_data.read_hotpotqa(hotpot)})


def build(name, data, length=2048, index=0, format_prompt=None):
  task = ruler_build.RulerTask(name, length, data, WORDS, format_prompt)
  sample = task.sample(index)
  assert sample.length == WORDS(sample.input + sample.answer_prefix) + task.tokens_to_generate
  assert sample.length <= length
  return task, sample


NEEDLE = r"One of the special magic {kind} for (.+?) is: (\S+?)\."


@pytest.mark.parametrize("name,keys,values,asked,haystack", [
    ("niah_single_1", 1, 1, 1, "noise"), ("niah_single_2", 1, 1, 1, "essay"),
    ("niah_single_3", 1, 1, 1, "essay"), ("niah_multikey_1", 4, 1, 1, "essay"),
    ("niah_multikey_2", 1, 1, 1, "needle"), ("niah_multikey_3", 1, 1, 1, "needle"),
    ("niah_multivalue", 1, 4, 1, "essay"), ("niah_multiquery", 4, 1, 4, "essay")])
def test_niah_prompts(data, name, keys, values, asked, haystack):
  _, s = build(name, data)
  kind = "uuids" if name in ("niah_single_3", "niah_multikey_3") else "numbers"
  one = values * asked == 1
  fields = split(NIAH_SINGULAR if one else RULER["niah"], s, type_needle_v=kind[:-1] if one
                 else kind)
  context, query = fields["context"], fields["query"]
  queried = re.split(r", and |, ", query)
  assert len(queried) == asked
  if asked > 1:  # "a, b, c, and d"
    assert query == ", ".join(queried[:-1]) + ", and " + queried[-1]
  needles = re.findall(NEEDLE.format(kind=kind), context)
  value = r"\d{7}" if kind == "numbers" else UUID4
  assert all(re.fullmatch(value, v) for _, v in needles)
  if name != "niah_multikey_3":
    assert all(re.fullmatch(r"[\w' -]+-[\w' -]+", k) for k, _ in needles)
  assert sorted(v for k, v in needles if k in queried) == sorted(s.outputs)
  assert len(s.outputs) == values * asked
  if haystack == "noise":
    lines = context.split("\n")
    assert len(needles) == keys * values and set(lines) - {NOISE} == {
        f"One of the special magic {kind} for {k} is: {v}." for k, v in needles}
  elif haystack == "needle":  # every line is a needle, one of them asked
    assert all(re.fullmatch(NEEDLE.format(kind=kind), line) for line in context.split("\n"))
    assert len(needles) > 10 and [k for k, _ in needles].count(queried[0]) == 1
  else:  # needles between the essay's sentences, joined by spaces
    assert "\n" not in context and len(needles) == keys * values
    assert re.sub(NEEDLE.format(kind=kind) + " ?", "", context).strip().startswith("The best")


def test_niah_positions_are_random(data):
  task = ruler_build.RulerTask("niah_single_1", 2048, data, WORDS)
  places = {task.sample(i).input.split("\n").index(
      next(ln for ln in task.sample(i).input.split("\n") if ln.startswith("One of"))) for i in
      range(8)}
  assert len(places) > 3


def test_vt_prompt_one_shot_and_chain(data):
  _, s = build("vt", data)
  # The worked example (ending in a newline), a newline, then the question.
  shot, question = s.input.split("\n\n" + RULER["vt"][0][:20], 1)
  question = RULER["vt"][0][:20] + question
  m = pattern(RULER["vt"][0] + RULER["vt"][1] + " {answer}", num_v="5").fullmatch(shot)
  assert m and re.fullmatch(r"\d{5}", m["query"]) and m["query"] != "12345"
  shot_names = m["answer"].split(" ")
  assert len(shot_names) == 5 and all(re.fullmatch(r"[A-Z]{3}", n) for n in shot_names)
  assert f"VAR {shot_names[0]} = {m['query']}" in m["context"]
  fields = split(RULER["vt"], ruler_build.Sample(0, question, s.answer_prefix, s.outputs, 0),
                 num_v="5")
  assignments = {}
  for line in fields["context"].split("\n"):
    if line != NOISE:
      found = re.fullmatch(r"VAR ([A-Z]{5}) = (VAR [A-Z]{5} |\d{5})", line)  # RULER's space
      assert found, line
      assignments[found.group(1)] = found.group(2).split()[-1]
  chain = [next(n for n, src in assignments.items() if src == fields["query"])]
  while any(src == chain[-1] for src in assignments.values()):
    chain.append(next(n for n, src in assignments.items() if src == chain[-1]))
  assert chain == s.outputs and len(assignments) == 5


@pytest.mark.parametrize("length,repeats,shot_repeats,shot_words", [
    (2048, (6, 1), (3, 1), 20), (4096, (30, 3), (10, 3), 40)])
def test_cwe_prompt_frequencies_and_one_shot(data, length, repeats, shot_repeats, shot_words):
  _, s = build("cwe", data, length)
  shot, question = s.input.split("\n" + RULER["cwe"][0][:30], 1)
  question = RULER["cwe"][0][:30] + question
  m = pattern(RULER["cwe"][0] + RULER["cwe"][1] + " {answer}").fullmatch(shot)
  assert m
  main = split(RULER["cwe"], ruler_build.Sample(0, question, s.answer_prefix, s.outputs, 0))
  for context, (common, uncommon) in ((m["context"], shot_repeats), (main["context"], repeats)):
    listed = re.findall(r"(\d+)\. (\S+)", context)
    assert [int(i) for i, _ in listed] == list(range(1, len(listed) + 1))
    counts = collections.Counter(w for _, w in listed)
    assert set(counts.values()) == {common, uncommon}
    top = [w for w, c in counts.items() if c == common]
    if context == m["context"]:
      assert len(counts) == shot_words
      assert m["answer"] == " ".join(f"{i + 1}. {w}" for i, w in enumerate(
          re.findall(r"\d+\. (\S+)", m["answer"]))) and set(m["answer"].split()[1::2]) == set(top)
    else:
      assert sorted(top) == sorted(s.outputs) and len(top) == 10


def test_fwe_prompt_and_zipf_counts(data):
  _, s = build("fwe", data)
  words = split(RULER["fwe"], s)["context"].split(" ")
  ranked = collections.Counter(words).most_common()
  assert ranked[0][0] == "..." and [w for w, _ in ranked[1:4]] == s.outputs
  assert all(re.fullmatch(r"[a-z]{6}", w) for w, _ in ranked[1:])
  # Counts floor(N k^-2 / zeta(2)): with c1 <= N / zeta(2) < c1 + 1 for rank 1, rank k has
  # floor(c1 / k^2) to floor((c1 + 1) / k^2), and ranks 2-4 are distinct.
  c1 = ranked[0][1]
  assert all(c1 // k ** 2 <= c <= (c1 + 1) // k ** 2 for k, (_, c) in enumerate(ranked[:6], 1))
  assert ranked[1][1] > ranked[2][1] > ranked[3][1] > ranked[4][1] and c1 > 100


@pytest.mark.parametrize("name", ["qa_1", "qa_2"])
def test_qa_prompts(data, name):
  questions, docs = data.qa["squad" if name == "qa_1" else "hotpotqa"]
  for index in range(2):
    _, s = build(name, data, index=index)
    fields = split(RULER["qa"], s)
    parts = fields["context"].split("\n\n")
    assert [p.split(":\n", 1)[0] for p in parts] == [f"Document {i + 1}" for i in range(len(parts))]
    assert {p.split(":\n", 1)[1] for p in parts} <= set(docs)
    assert fields["query"] == questions[index]["query"] and s.outputs == questions[index]["outputs"]
    own = questions[index]["context"]
    assert all(docs[i] in [p.split(":\n", 1)[1] for p in parts] for i in own)


def test_lwm_chat_template_wraps_the_task_then_the_answer_prefix(data):
  from lwm.eval import chat_format
  lwm = chat_format.prompt_formatter("lwm")
  assert lwm("X") == LWM_CHAT.format(task_template="X")
  _, s = build("niah_multivalue", data, format_prompt=lwm)
  assert s.input.startswith("You are a helpful assistant. USER: Some special magic numbers")
  assert s.input.endswith(" mentioned in the provided text? ASSISTANT: ")
  assert s.answer_prefix.startswith(" The special magic numbers for")
  # RULER rewrites the whole template when one value is asked, its model template included.
  _, s = build("niah_single_1", data, format_prompt=lwm)
  assert s.input.startswith("You is a helpful assistant. USER: A special magic number is hidden")
  # vt's worked example goes between the model template and the task.
  _, s = build("vt", data, format_prompt=lwm)
  assert s.input.startswith("You are a helpful assistant. USER: " + RULER["vt"][0][:30])
  assert s.input.count(RULER["vt"][0][:30]) == 2 and s.input.endswith(" ASSISTANT: ")
  # cwe's worked example is a whole wrapped prompt of its own.
  _, s = build("cwe", data, format_prompt=lwm)
  assert s.input.count("You are a helpful assistant. USER: ") == 2
  assert "ASSISTANT:  Answer: The top 10 words" in s.input


def test_samples_are_reproducible_and_fit_the_length(data):
  for name in ruler_tasks.TASKS:
    for length in (2048, 4096):
      first = build(name, data, length, index=3)[1]
      again = ruler_build.RulerTask(name, length, data, WORDS).sample(3)
      assert first == again and first.length > 0.5 * length, (name, length, first.length)


def test_a_length_too_short_is_refused_by_name(data):
  with pytest.raises(ValueError, match="cwe does not fit in 400 tokens"):
    ruler_build.RulerTask("cwe", 400, data, WORDS).sample(0)


# ------------------------------------------------------------------------------------ Metrics

def test_string_match_all_and_part_on_hand_computed_cases():
  refs = ["1234567", "7654321", "ABC-def"]
  assert scoring.string_match_all("1234567 and abc-DEF", refs) == pytest.approx(2 / 3)
  assert scoring.string_match_all("x 123456 y", ["1234567"]) == 0.0  # a part is not a match
  assert scoring.string_match_all("12345678", ["1234567"]) == 1.0  # RULER: substring
  assert scoring.string_match_all("1234567, 1234567", ["1234567", "7654321"]) == 0.5  # repeated
  assert scoring.string_match_part("The answer is PARIS.", ["London", "paris"]) == 1.0
  assert scoring.string_match_part("Lyon", ["London", "paris"]) == 0.0
  # Per task: mean x 100, rounded to 2 decimals, control characters read as newlines.
  preds = ["1234567 7654321 abc-def", "1234567", "\x00nothing\x1f", ""]
  assert scoring.ruler_score(preds, [refs] * 4, "string_match_all") == 33.33
  assert scoring.ruler_score(["a", "b", "c"], [["a"], ["b"], ["x"]], "string_match_part") == 66.67
  assert scoring.ruler_prediction("  ok\tthen\x00 \n") == "ok\nthen"


# ------------------------------------------------------------------------------------ Readers

def write_squad(path):
  paragraphs = [
      {"context": "Paris is the capital of France.", "qas": [
          {"id": "1", "question": "What is the capital of France?", "is_impossible": False,
           "answers": [{"text": "Paris", "answer_start": 0},
                       {"text": "Paris.", "answer_start": 0}]},
          {"id": "2", "question": "What is the capital of Mars?", "is_impossible": True,
           "answers": [], "plausible_answers": [{"text": "Paris", "answer_start": 0}]}]},
      {"context": "The Louvre is a museum in Paris.", "qas": [
          {"id": "3", "question": "Where is the Louvre?", "is_impossible": False,
           "answers": [{"text": "in Paris", "answer_start": 23}]}]}]
  other = [{"context": f"Berlin fact number {i}.", "qas": [
      {"id": f"b{i}", "question": f"Which fact is {i}?", "is_impossible": False,
       "answers": [{"text": f"number {i}", "answer_start": 7}]}]} for i in range(30)]
  path.write_text(json.dumps({"version": "v2.0", "data": [
      {"title": "France", "paragraphs": paragraphs}, {"title": "Berlin", "paragraphs": other}]}))
  return str(path)


def write_hotpotqa(path):
  rows = [{"_id": f"q{i}", "question": f"Which is older, {i}?", "answer": f"Rome {i}",
           "type": "comparison", "level": "hard", "supporting_facts": [[f"Rome {i}", 0]],
           "context": [[f"Rome {i}", ["Rome is old.", " It is in Italy."]],
                       [f"Paris {i}", ["Paris is younger."]]]} for i in range(20)]
  path.write_text(json.dumps(rows))
  return str(path)


def test_squad_reader_keeps_answerable_questions_and_their_articles(tmp_path):
  questions, docs = ruler_data.read_squad(write_squad(tmp_path / "s.json"))
  assert len(questions) == 32 and len(docs) == 32 and docs == sorted(docs)
  first = questions[0]
  assert first["query"] == "What is the capital of France?"
  assert first["outputs"] == ["Paris", "Paris."]
  assert docs[first["context"][0]] == "Paris is the capital of France."
  assert [docs[i] for i in first["more_context"]] == ["The Louvre is a museum in Paris."]
  (tmp_path / "bad.json").write_text(json.dumps({"data": [{"title": "x"}]}))
  with pytest.raises(ValueError, match="SQuAD v2.0's layout"):
    ruler_data.read_squad(str(tmp_path / "bad.json"))


def test_hotpotqa_reader_joins_title_and_sentences(tmp_path):
  questions, docs = ruler_data.read_hotpotqa(write_hotpotqa(tmp_path / "h.json"))
  assert len(questions) == 20 and "Rome 0\nRome is old. It is in Italy." in docs
  assert questions[0]["outputs"] == ["Rome 0"] and len(questions[0]["context"]) == 2


def test_essays_from_a_folder_or_rulers_json(tmp_path):
  (tmp_path / "essays").mkdir()
  (tmp_path / "essays" / "b.txt").write_text("Second  essay.\n")
  (tmp_path / "essays" / "a.txt").write_text("First essay.\n")
  text = ruler_data.read_essays(str(tmp_path / "essays"))
  assert text == "First essay.\nSecond  essay.\n"
  assert ruler_data.essay_words(text) == ["First", "essay.", "Second", "essay.", ""]
  (tmp_path / "pg.json").write_text(json.dumps({"text": "Some text."}))
  assert ruler_data.read_essays(str(tmp_path / "pg.json")) == "Some text."
  with pytest.raises(ValueError, match="no .txt files"):
    ruler_data.read_essays(str(tmp_path))


def test_sentences_and_zeta():
  assert ruler_data.split_sentences('He left. "Why?" she asked! Fine (really.) Ok') == [
      "He left.", '"Why?" she asked!', "Fine (really.)", "Ok"]
  assert ruler_tasks.zeta(2.0) == pytest.approx(3.141592653589793 ** 2 / 6, rel=1e-13)
  assert ruler_tasks.zeta(3.0) == pytest.approx(1.2020569031595942, rel=1e-13)


def test_uuid_values_are_version_4():
  value = ruler_tasks.random_uuid(random.Random(0))
  assert re.fullmatch(UUID4, value)
