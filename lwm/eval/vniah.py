"""V-NIAH as LongVA defines it (EvolvingLMMs-Lab/LongVA, vision_niah/eval_vision_niah.py), for
lwm's interleaved tokens: `scripts/eval_needle.py --protocol vniah`.

  summary = run_vniah(loaded, output="out/vniah", haystack=frames, needles=needles,
                      frame_counts=frame_counts(20, 300, 20), depths=depth_grid(0.2))

- The haystack video is sampled once to the largest frame count; a cell of N frames uses its
  first N (LongVA slices its 3,000 sampled frames the same way).
- A needle is an image with a question and an answer (a JSONL of {"image", "question",
  "answer"}, `read_needles`); its frame goes before haystack frame int(depth x N), so a cell has
  N + 1 frames.
- Prompt: [BOS] {template's first half} <vision> frames </vision> {question} {template's second
  half}; the answer's tokens follow, teacher-forced: a needle counts as found when the model's
  argmax is the answer's next token at every answer position (LongVA's `eval_forward`).
- A cell's score is the mean over the needles; the average is the mean over cells. Writes
  OUT/results.json (one entry per cell and needle; a rerun resumes), OUT/all_accuracies.json and
  OUT/avg_accuracy.txt (LongVA's files), OUT/heatmap.png (depth x frames).
"""
import json
import os

import numpy as np

from lwm.data.interleave import vision_tokens
from lwm.eval import chat_format, grid


def frame_counts(min_frames: int, max_frames: int, interval: int) -> list[int]:
  """LongVA's range(min, max + 1, interval)."""
  if min_frames < 1 or interval < 1 or max_frames < min_frames:
    raise ValueError(f"need 1 <= --min-frames <= --max-frames and --frame-interval >= 1, got "
                     f"{min_frames}, {max_frames}, {interval}")
  return list(range(min_frames, max_frames + 1, interval))


def depth_grid(interval: float) -> list[float]:
  """LongVA's np.arange(0, 1 + interval, interval), kept within [0, 1]: 0, 0.2, ... 1.0."""
  if not 0 < interval <= 1:
    raise ValueError(f"--depth-interval must be in (0, 1], got {interval}")
  return [round(float(d), 6) for d in np.arange(0, 1 + interval, interval) if d <= 1 + 1e-9]


def read_needles(path: str) -> list[dict]:
  """[{'image': absolute path, 'question', 'answer'}] of a JSONL (image paths relative to it)."""
  root, needles = os.path.dirname(os.path.abspath(path)), []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      row = json.loads(line)
      missing = [k for k in ("image", "question", "answer") if not isinstance(row.get(k), str)]
      if missing:
        raise ValueError(f"{path} line {number} lacks {', '.join(missing)}: a needle is "
                         '{"image": "a.png", "question": "...", "answer": "..."}')
      needles.append({**row, "image": os.path.join(root, row["image"])})
  if not needles:
    raise ValueError(f"{path} holds no needle")
  return needles


def needle_index(depth: float, frames: int) -> int:
  """The haystack frame the needle goes before: int(depth x frames) (LongVA's)."""
  return int(depth * frames)


def vniah_prompt(tokenizer, vocab, haystack_codes: np.ndarray, needle_codes: np.ndarray,
                 depth: float, question: str, format_prompt=None) -> tuple:
  """(tokens, vision_mask, index of the needle frame): haystack_codes `[N, codes_per_frame]`,
  needle_codes `[1, codes_per_frame]`."""
  at = needle_index(depth, len(haystack_codes))
  codes = np.concatenate([haystack_codes[:at], needle_codes, haystack_codes[at:]])
  before, after = chat_format.split_template(format_prompt or (lambda t: t))
  text = lambda s: tokenizer.encode(s, add_special_tokens=False) if s else []
  bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
  head = bos + text(before) + list(vocab.vision_start)
  tail = list(vocab.vision_end) + text(question) + text(after)
  video = vision_tokens(codes, vocab)
  tokens = np.concatenate([np.asarray(head, np.int32), video, np.asarray(tail, np.int32)])
  mask = np.zeros(len(tokens), bool)
  mask[len(head):len(head) + len(video)] = True
  return tokens, mask, at


def _key(cell: dict) -> tuple:
  return int(cell["frames"]), float(cell["depth"]), int(cell["needle"])


def summarize(entries: list[dict]) -> dict:
  """Per (frames, depth) mean over needles, the average over cells, LongVA's rows."""
  groups = {}
  for e in entries:
    groups.setdefault((int(e["frames"]), float(e["depth"])), []).append(float(e["score"]))
  cells = [{"context_length": n, "depth": d, "score": float(np.mean(v)), "rounds": len(v)}
           for (n, d), v in sorted(groups.items())]
  average = float(np.mean([c["score"] for c in cells])) if cells else 0.0
  longva = [{"Num. Frame": c["context_length"], "Frame Depth": round(c["depth"], -1),
             "Score": c["score"]} for c in cells]
  table = ("V-NIAH (rows: needle depth %, columns: frames)\n" +
           grid.table(cells, average).replace("overall accuracy", "V-NIAH average"))
  return {"average": average, "cells": cells, "all_accuracies": longva, "table": table}


def run_vniah(loaded, *, output: str, haystack: np.ndarray, needles: list[dict],
              frame_counts, depths, format_prompt=None, progress: bool = True,
              forcer=None, encoder=None) -> dict:
  """Runs (or resumes) the grid; returns the summary (average 0-1, cells, table, paths).

  haystack: uint8 `[frames, size, size, 3]`, at least max(frame_counts) frames. needles: dicts
  with 'question', 'answer' and 'image' (a path) or 'frame' (uint8 `[size, size, 3]`).
  forcer / encoder replace the model's teacher forcing and VQGAN (tests)."""
  from tqdm import tqdm
  from lwm.eval import teacher_forced, video_needle
  tokenizer, encoder = video_needle.tokenizer_and_encoder(loaded, encoder, "V-NIAH")
  counts = sorted(frame_counts)
  if len(haystack) < counts[-1]:
    raise ValueError(f"the haystack has {len(haystack)} frames; --max-frames is {counts[-1]}")
  size = encoder.config.resolution
  vocab = video_needle.vocab_for(tokenizer, encoder.config.codebook_size, loaded.vocab)
  forcer = forcer or teacher_forced.TeacherForcer(loaded.model)
  settings = dict(protocol="vniah", needles=[{k: n[k] for k in ("image", "question", "answer")
                                              if k in n} for n in needles],
                  haystack_frames=int(len(haystack)), source=loaded.source,
                  template=chat_format.split_template(format_prompt or (lambda t: t)))
  results = grid.Results(output, settings, key=_key)
  hay_codes = encoder(haystack[:counts[-1]])
  needle_codes = [encoder((n["frame"] if "frame" in n else
                           video_needle.read_image(n["image"], size)[0])[None]) for n in needles]
  answers = [tokenizer.encode(n["answer"], add_special_tokens=False) for n in needles]
  cells = [{"frames": n, "depth": round(d * 100, 6), "needle": i}
           for n in counts for d in depths for i in range(len(needles))]
  for cell in tqdm([c for c in cells if _key(c) not in results.done], desc="V-NIAH",
                   disable=not progress, dynamic_ncols=True):
    i = cell["needle"]
    tokens, mask, at = vniah_prompt(tokenizer, vocab, hay_codes[:cell["frames"]],
                                    needle_codes[i], cell["depth"] / 100, needles[i]["question"],
                                    format_prompt)
    predicted = list(forcer(tokens, mask, answers[i]))
    results.add({**cell, "needle_frame": at, "prompt_tokens": int(len(tokens)),
                 "answer": needles[i]["answer"], "predicted": tokenizer.decode(predicted),
                 "score": float(predicted == answers[i])})
  wanted = {_key(c) for c in cells}
  summary = summarize([c for c in results.cells if _key(c) in wanted])
  with open(os.path.join(output, "all_accuracies.json"), "w") as f:
    json.dump(summary["all_accuracies"], f, indent=4)
  with open(os.path.join(output, "avg_accuracy.txt"), "w") as f:
    f.write(f"Average Accuracy: {summary['average']}\n")
  summary["heatmap"] = grid.heatmap(summary["cells"], summary["average"],
                                    os.path.join(output, "heatmap.png"), "V-NIAH",
                                    xlabel="Num. of Frames")
  summary["results"] = os.path.join(output, "results.json")
  return summary
