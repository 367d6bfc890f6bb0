"""The needle grid's bookkeeping: cells, a results.json that a rerun resumes from, scoring, the
depth x context-length heatmap and the summary table. Text and video needles share all of it.

A cell is one (context_length, depth, round). results.json is a list of finished cells, rewritten
(atomically) after each one; `run.json` holds the settings, so a rerun with other settings into the
same directory is refused instead of mixing two experiments.
"""
import json
import os
import re

import numpy as np

from lwm.files import write_json

# The colour scheme of the common harnesses (gkamradt's NIAH, LWM's plots): red -> yellow -> green.
HEATMAP_COLORS = ["#F0496E", "#EBB839", "#0CD79F"]


# ------------------------------------------------------------------------------------ Grids

def linear_grid(minimum: float, maximum: float, intervals: int) -> list[int]:
  """`intervals` integers evenly spaced from minimum to maximum, both included (no duplicates)."""
  if intervals < 1 or maximum < minimum:
    raise ValueError(f"need intervals >= 1 and max >= min, got min={minimum}, max={maximum}, "
                     f"intervals={intervals}")
  if intervals == 1:
    return [int(round(maximum))]
  return sorted({int(round(x)) for x in np.linspace(minimum, maximum, intervals)})


def parse_list(text: str) -> list[int]:
  """'1024,4096' -> [1024, 4096]; also accepts 1k / 1m suffixes (1k = 1024)."""
  values = []
  for item in text.split(","):
    item = item.strip().lower()
    scale = {"k": 1024, "m": 1024 * 1024}.get(item[-1:], 1)
    number = item[:-1] if scale > 1 else item
    try:
      values.append(int(float(number) * scale))
    except ValueError:
      raise ValueError(f"{text!r} must be comma-separated numbers such as 1024,4096 or 1k,32k; "
                       f"{item!r} is not one") from None
  return values


def cell_key(cell: dict) -> tuple:
  return int(cell["context_length"]), float(cell["depth"]), int(cell.get("round", 0))


# ------------------------------------------------------------------------------------ Scoring

def numbers_in(answer: str) -> list[str]:
  """The distinct digit runs of an answer, in order ("12, 345 and 12" -> ["12", "345"])."""
  found = []
  for number in re.findall(r"\d+", answer):
    if number not in found:
      found.append(number)
  return found


def score_answer(answer: str, expected: list[str]) -> float:
  """Exact match of numbers: the fraction of `expected` values that appear as whole numbers anywhere
  in the answer (a chat model may restate the question first), and 0 when the answer holds more
  distinct numbers than were asked (a list of guesses, e.g. every number of the haystack, is not an
  answer). One digit off is simply another number.
  Expected values that are not numbers (a given needle image showing a word) must be the whole
  answer, ignoring case and punctuation."""
  if not all(v.isdigit() for v in expected):
    words = lambda text: re.findall(r"\w+", text.lower())
    return float(bool(expected) and words(answer) == [w for v in expected for w in words(v)])
  found = numbers_in(answer)
  if not expected or len(found) > len(expected):
    return 0.0
  return sum(value in found for value in expected) / len(expected)


# ------------------------------------------------------------------------------------ Results

class Results:
  """OUT/results.json (finished cells) and OUT/run.json (the settings), resumable. `key` names a
  cell (default: context length, depth, round)."""

  def __init__(self, output: str, settings: dict, key=cell_key):
    self.output, self.key = output, key
    os.makedirs(output, exist_ok=True)
    settings_path = os.path.join(output, "run.json")
    settings = json.loads(json.dumps(settings))
    if os.path.exists(settings_path):
      with open(settings_path) as f:
        previous = json.load(f)
      if previous != settings:
        changed = "; ".join(f"{k}={previous.get(k)!r} there, {settings.get(k)!r} now"
                            for k in sorted(set(previous) | set(settings))
                            if previous.get(k) != settings.get(k))
        raise ValueError(f"{output} holds results of a run with other settings ({changed}); use "
                         "another --output or the same settings")
    else:
      write_json(settings_path, settings)
    path = os.path.join(output, "results.json")
    self.cells = []
    if os.path.exists(path):
      with open(path) as f:
        self.cells = json.load(f)
    self.done = {key(c) for c in self.cells}

  def add(self, cell: dict) -> None:
    self.cells.append(cell)
    self.done.add(self.key(cell))
    write_json(os.path.join(self.output, "results.json"), self.cells)


def summarize(cells: list[dict]) -> dict:
  """{'accuracy': mean score, 'cells': [{'context_length', 'depth', 'score', 'rounds'}],
  'table': text}."""
  groups = {}
  for c in cells:
    groups.setdefault((int(c["context_length"]), float(c["depth"])), []).append(float(c["score"]))
  per_cell = [{"context_length": k[0], "depth": k[1], "score": float(np.mean(v)), "rounds": len(v)}
              for k, v in sorted(groups.items())]
  accuracy = float(np.mean([c["score"] for c in cells])) if cells else 0.0
  return {"accuracy": accuracy, "cells": per_cell, "table": table(per_cell, accuracy)}


def _pivot(per_cell: list[dict]):
  lengths = sorted({c["context_length"] for c in per_cell})
  depths = sorted({c["depth"] for c in per_cell})
  grid = np.full((len(depths), len(lengths)), np.nan)
  for c in per_cell:
    grid[depths.index(c["depth"]), lengths.index(c["context_length"])] = c["score"]
  return lengths, depths, grid


def length_label(n: int) -> str:
  if n >= 1024 and n % 1024 == 0:
    return f"{n // 1024 // 1024}M" if n % (1024 * 1024) == 0 else f"{n // 1024}K"
  return str(n)


def table(per_cell: list[dict], accuracy: float) -> str:
  """Depth (rows) x context length (columns) of mean scores, as text."""
  lengths, depths, grid = _pivot(per_cell)
  lines = ["depth % | " + " ".join(f"{length_label(n):>6}" for n in lengths)]
  lines.append("-" * len(lines[0]))
  for depth, row in zip(depths, grid):
    lines.append(f"{depth:7g} | " + " ".join("     -" if np.isnan(v) else f"{v:6.2f}" for v in row))
  lines.append(f"overall accuracy {accuracy:.1%} over {len(per_cell)} cells")
  return "\n".join(lines)


def heatmap(per_cell: list[dict], accuracy: float, path: str, title: str,
            xlabel: str = "Token Limit") -> str:
  """Writes the depth x context-length heatmap PNG (scores 0..1, red to green); returns the path.
  `xlabel` names the columns (V-NIAH's are frame counts)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.colors import LinearSegmentedColormap
  lengths, depths, grid = _pivot(per_cell)
  cmap = LinearSegmentedColormap.from_list("needle", HEATMAP_COLORS)
  fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(lengths) + 3), max(4, 0.4 * len(depths) + 2)))
  image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, aspect="auto")
  for i in range(len(depths)):
    for j in range(len(lengths)):
      if not np.isnan(grid[i, j]) and len(lengths) * len(depths) <= 400:
        ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7)
  ax.set_xticks(range(len(lengths)), [length_label(n) for n in lengths], rotation=45)
  ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
  ax.set_xlabel(xlabel)
  ax.set_ylabel("Depth Percent")
  ax.set_title(f"{title}: accuracy {accuracy:.1%}")
  fig.colorbar(image, ax=ax, label="score")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def run_grid(results: Results, cells: list[dict], evaluate, *, title: str, progress: bool = True):
  """Evaluates every cell not yet in `results` with `evaluate(cell) -> dict` (merged into the cell),
  then writes heatmap.png and returns the summary (accuracy, per-cell scores, table, paths)."""
  from tqdm import tqdm
  todo = [c for c in cells if cell_key(c) not in results.done]
  bar = tqdm(todo, desc=title, disable=not progress, dynamic_ncols=True)
  for cell in bar:
    results.add({**cell, **evaluate(cell)})
    scores = [c["score"] for c in results.cells]
    bar.set_postfix(accuracy=f"{np.mean(scores):.2f}")
  wanted = {cell_key(c) for c in cells}
  finished = [c for c in results.cells if cell_key(c) in wanted]
  summary = summarize(finished)
  summary["heatmap"] = heatmap(summary["cells"], summary["accuracy"],
                               os.path.join(results.output, "heatmap.png"), title)
  summary["results"] = os.path.join(results.output, "results.json")
  summary["skipped"] = len(cells) - len(todo)
  return summary
