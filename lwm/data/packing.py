"""Packing: examples of any length -> rows of exactly `seq_len` tokens, several documents per row.

The plan (which slice of which example goes in which row) needs only each example's length and
layout (`build_index`), so every host plans the same global batch cheaply and then reads only the
examples of its own rows. Rules:
  * an example that fits goes whole into the current row; one that does not is set aside (up to
    `lookahead` of them) and goes, oldest first, into the first later row with room;
  * a text document longer than `seq_len` is split: pieces fill the current row and the next ones,
    consecutive pieces overlapping by one token so that every next-token pair is trained once;
  * an example with video longer than `seq_len` is cut after its last whole frame that fits; if no
    frame fits or the cut keeps no trained target, it is skipped. Both are counted.
`assemble` then builds the row arrays with NumPy, without a Python loop over tokens.
"""
import numpy as np

WHOLE, SPLIT, CUT, SKIPPED = 0, 1, 2, 3
STATUS_NAMES = ("whole", "split", "cut", "skipped")
INDEX_FIELDS = ("length", "num_frames", "first_vision", "vision_tokens", "first_loss")


def example_layout(example: dict) -> dict:
  """The index fields of one example (first_* are -1 when absent)."""
  vision = np.flatnonzero(example["vision_mask"])
  loss = np.flatnonzero(example["loss_mask"][1:]) + 1  # the first token is nobody's target
  return {"length": len(example["tokens"]), "num_frames": int(example.get("num_frames", 0)),
          "first_vision": int(vision[0]) if len(vision) else -1, "vision_tokens": len(vision),
          "first_loss": int(loss[0]) if len(loss) else -1}


def build_index(examples) -> dict:
  """{field: int64 [num_examples]} for every example of a random-access source (one full read)."""
  rows = [example_layout(examples[i]) for i in range(len(examples))]
  return {f: np.asarray([r[f] for r in rows], np.int64) for f in INDEX_FIELDS}


def usable_lengths(index: dict, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens of each example that are packed, status) for rows of `seq_len`; vectorised."""
  length, frames = index["length"], index["num_frames"]
  first_vision, first_loss = index["first_vision"], index["first_loss"]
  has_video = (frames > 0) & (first_vision >= 0)
  frame_tokens = np.where(has_video, index["vision_tokens"] // np.maximum(frames, 1), 1)
  whole_frames = np.clip((seq_len - first_vision) // frame_tokens, 0, frames)
  cut = first_vision + whole_frames * frame_tokens
  status = np.full(length.shape, WHOLE)
  status[(length > seq_len) & ~has_video] = SPLIT
  long_video = (length > seq_len) & has_video
  keeps_target = (whole_frames >= 1) & (first_loss >= 1) & (first_loss < cut)
  status[long_video & keeps_target] = CUT
  status[long_video & ~keeps_target] = SKIPPED
  status[first_loss < 1] = SKIPPED  # nothing to train on (e.g. a lone BOS)
  usable = np.select([status == CUT, status == SKIPPED], [cut, 0], length)
  return usable.astype(np.int64), status


def new_state() -> dict:
  """Where the packer stands: the epoch, the position in its shuffled order, the token offset into
  a split document, the examples set aside for a later row, and running counts."""
  return {"epoch": 0, "position": 0, "offset": 0, "pending": [], "tokens": 0, "padding": 0,
          "counts": {name: 0 for name in STATUS_NAMES}}


def plan_rows(usable, status, order_for_epoch, state: dict, seq_len: int, num_rows: int,
              lookahead: int = 64):
  """Plans `num_rows` rows; returns (rows, new state).

  rows[r] is a list of (example index, start, stop) slices, in row order.
  order_for_epoch(epoch) -> permutation of the example indices for that epoch.
  lookahead: up to this many examples that do not fit the current row are set aside ("pending")
  and placed, oldest first, in the first row with room; 0 is plain greedy packing.
  """
  state = {**state, "counts": dict(state["counts"]), "pending": list(state["pending"])}
  pending, counts = state["pending"], state["counts"]
  rows, row, free = [], [], seq_len

  def place(example, start, stop):
    nonlocal free
    row.append((example, start, stop))
    free -= stop - start
    state["tokens"] += stop - start
    if start == 0:
      counts[STATUS_NAMES[status[example]]] += 1

  order = order_for_epoch(state["epoch"])
  placed_this_epoch = 0 if state["position"] == 0 else 1
  while len(rows) < num_rows:
    if free < 2:  # every packable example has at least 2 tokens
      rows.append(row)
      state["padding"] += free
      row, free = [], seq_len
      continue
    fit = next((j for j, e in enumerate(pending) if usable[e] <= free), None)
    if fit is not None:
      example = pending.pop(fit)
      place(example, 0, int(usable[example]))
      continue
    if state["position"] == len(order):
      if placed_this_epoch == 0 and not pending:
        raise ValueError(f"no example can be packed into rows of seq_len={seq_len}: every one is "
                         "skipped (videos longer than the sequence without a whole frame that "
                         "fits)")
      state["epoch"], state["position"], placed_this_epoch = state["epoch"] + 1, 0, 0
      order = order_for_epoch(state["epoch"])
    example = int(order[state["position"]])
    kind, total, offset = status[example], int(usable[example]), state["offset"]
    if kind == SKIPPED:
      counts["skipped"] += 1
      state["position"] += 1
    elif kind == SPLIT and free >= 2:  # fill the row; a one-token piece would train nothing
      take = min(total - offset, free)
      place(example, offset, offset + take)
      placed_this_epoch += 1
      if offset + take >= total:
        state["position"], state["offset"] = state["position"] + 1, 0
      else:
        state["offset"] = offset + take - 1  # the next piece repeats the last token as its input
    elif kind != SPLIT and total <= free:
      place(example, 0, total)
      placed_this_epoch += 1
      state["position"] += 1
    elif kind != SPLIT and len(pending) < lookahead:
      pending.append(example)
      placed_this_epoch += 1
      state["position"] += 1
    else:  # nothing fits: close the row
      rows.append(row)
      state["padding"] += free
      row, free = [], seq_len
  return rows, state


def assemble(rows: list, fetch, seq_len: int) -> dict:
  """Builds the arrays `[len(rows), seq_len]` of planned rows.

  fetch(example index) -> example dict (tokens, vision_mask, loss_mask). Returns tokens int32,
  vision_mask bool, targets int32, target_vision_mask bool, loss_mask float32, segment_ids int32
  (1, 2, ... per document, 0 = padding), positions int32 (from 0 in each document).
  """
  num_rows = len(rows)
  cache = {}
  parts = {"tokens": [], "vision_mask": [], "loss_mask": []}
  lengths, segments = [], []
  pads = {"tokens": np.zeros(seq_len, np.int32), "vision_mask": np.zeros(seq_len, bool),
          "loss_mask": np.zeros(seq_len, bool)}
  for row in rows:
    used = 0
    for segment, (example, start, stop) in enumerate(row, 1):
      if example not in cache:
        cache[example] = fetch(example)
      for key in parts:
        parts[key].append(cache[example][key][start:stop])
      lengths.append(stop - start)
      segments.append(segment)
      used += stop - start
    if used < seq_len:
      for key in parts:
        parts[key].append(pads[key][:seq_len - used])
      lengths.append(seq_len - used)
      segments.append(0)
  flat = {k: np.concatenate(v) if v else pads[k][:0] for k, v in parts.items()}
  lengths = np.asarray(lengths, np.int64)
  starts = np.cumsum(lengths) - lengths
  segment_ids = np.repeat(np.asarray(segments, np.int32), lengths).reshape(num_rows, seq_len)
  positions = np.arange(num_rows * seq_len) - np.repeat(starts, lengths)
  positions = positions.astype(np.int32).reshape(num_rows, seq_len) * (segment_ids > 0)
  tokens = flat["tokens"].astype(np.int32, copy=False).reshape(num_rows, seq_len)
  vision = flat["vision_mask"].reshape(num_rows, seq_len)
  loss = flat["loss_mask"].reshape(num_rows, seq_len)
  # Target i is token i + 1 of the same document; the last token of a document has none.
  same = np.zeros((num_rows, seq_len), bool)
  same[:, :-1] = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, :-1] > 0)
  targets = np.zeros_like(tokens)
  targets[:, :-1] = tokens[:, 1:]
  target_vision = np.zeros_like(vision)
  target_vision[:, :-1] = vision[:, 1:]
  loss_mask = np.zeros((num_rows, seq_len), np.float32)
  loss_mask[:, :-1] = loss[:, 1:]
  return {"tokens": tokens, "vision_mask": vision, "targets": np.where(same, targets, 0),
          "target_vision_mask": target_vision & same, "loss_mask": loss_mask * same,
          "segment_ids": segment_ids, "positions": positions}
