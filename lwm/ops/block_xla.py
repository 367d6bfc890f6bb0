"""The "xla" implementation of the block contract (`lwm.ops.block_contract`): tiled jnp.

It is the reference the kernels are tested against and the CPU path. Queries and keys are visited
in tiles of `block_q` x `block_kv` tokens; a tile that is entirely masked (above the causal
diagonal, or between segments that cannot meet) is skipped with `lax.cond`, and no `[seq, seq]`
array is ever formed. Statistics and accumulators are float32.

Shapes: q, o, dq `[batch, n, heads, head_dim]`; k, v `[batch, n, kv_heads, head_dim]`;
positions `[n]` (global token index); segment ids `[batch, n]` (0 = padding) or None;
row statistics (m, l, lse, delta) `[batch, n, heads]`.
"""
import jax.numpy as jnp
from jax import lax

from lwm.ops.block_contract import MASK_VALUE


def _slice(x, start, size, axis=1):
  return lax.dynamic_slice_in_dim(x, start, size, axis=axis)


def _add_slice(x, update, start, axis=1):
  return lax.dynamic_update_slice_in_dim(x, _slice(x, start, update.shape[axis], axis) + update,
                                         start, axis=axis)


def _segment_range(seg):
  """Per row, the smallest and largest non-padding segment id of a tile: `[batch]` each."""
  big = jnp.iinfo(jnp.int32).max
  return jnp.where(seg == 0, big, seg).min(axis=1), jnp.where(seg == 0, -1, seg).max(axis=1)


SKIP, FULL, MASKED = 0, 1, 2  # what a tile needs: nothing, no mask, or the mask


def _tile_kind(q_pos, kv_pos, q_seg, kv_seg, causal):
  """SKIP when every (query, key) pair of the tile is masked, FULL when none is, else MASKED.

  Positions are contiguous within a tile, so the causal test reads the tile's first and last ones.
  """
  needed, full = jnp.bool_(True), jnp.bool_(True)
  if causal:
    needed, full = q_pos[-1] >= kv_pos[0], q_pos[0] >= kv_pos[-1]
  if q_seg is not None:
    q_lo, q_hi = _segment_range(q_seg)
    k_lo, k_hi = _segment_range(kv_seg)
    needed &= jnp.any((q_lo <= k_hi) & (k_lo <= q_hi))
    one_segment = (q_lo == q_hi) & (k_lo == q_lo) & (k_hi == q_lo)
    full &= jnp.all(one_segment) & (q_seg.min() > 0) & (kv_seg.min() > 0)
  return jnp.where(needed, jnp.where(full, FULL, MASKED), SKIP)


def _causal_tiles(tile_first_pos, limit, causal):
  """(tile order, count): the tiles whose first position is <= `limit` come first, so a loop over
  the first `count` entries of the order visits exactly the tiles the causal mask leaves open."""
  if not causal:
    return jnp.arange(tile_first_pos.shape[0]), tile_first_pos.shape[0]
  open_ = tile_first_pos <= limit
  return jnp.argsort(~open_, stable=True), open_.sum()


def _by_kind(kind, update, acc):
  """Runs `update(acc, masked)` as the tile kind asks; skipped tiles cost only this branch."""
  return lax.switch(kind, [lambda a: a, lambda a: update(a, False), lambda a: update(a, True)], acc)


def _tile_mask(q_pos, kv_pos, q_seg, kv_seg, causal):
  """Visibility `[batch or 1, 1, 1, block_q, block_kv]` (broadcasts against grouped scores)."""
  mask = jnp.ones((1, q_pos.shape[0], kv_pos.shape[0]), bool)
  if causal:
    mask &= q_pos[None, :, None] >= kv_pos[None, None, :]
  if q_seg is not None:
    mask &= (q_seg[:, :, None] == kv_seg[:, None, :]) & (q_seg[:, :, None] != 0)
  return mask[:, None, None]


def _grouped(x, kv_heads):
  """[batch, n, heads, ...] -> [batch, n, kv_heads, groups, ...]."""
  return x.reshape(x.shape[:2] + (kv_heads, x.shape[2] // kv_heads) + x.shape[3:])


def _rows(stat, kv_heads):
  """Row statistic [batch, n, heads] -> [batch, kv_heads, groups, n, 1] to broadcast on scores."""
  return jnp.moveaxis(_grouped(stat, kv_heads), 1, 3)[..., None]


def _unrows(stat):
  """Inverse of `_rows` for a reduced statistic: [batch, kv_heads, groups, n] -> [batch, n,
  heads]."""
  stat = jnp.moveaxis(stat, 3, 1)
  return stat.reshape(stat.shape[:2] + (-1,))


def _scores(q, k, scale, precision):
  return jnp.einsum("bqhgd,bkhd->bhgqk", q, k, precision=precision,
                    preferred_element_type=jnp.float32) * scale


def _pos_seg_tiles(q_pos, kv_pos, q_seg, kv_seg, qs, ks, tiling):
  bq, bk = tiling.block_q, tiling.block_kv
  qp, kp = _slice(q_pos, qs, bq, 0), _slice(kv_pos, ks, bk, 0)
  qseg = None if q_seg is None else _slice(q_seg, qs, bq)
  kseg = None if kv_seg is None else _slice(kv_seg, ks, bk)
  return qp, kp, qseg, kseg


def block_forward(q, k, v, q_pos, kv_pos, q_seg, kv_seg, state, tiling, precision=None):
  """Folds one key/value block into the running softmax state `(o, m, l)` (float32)."""
  n_q, kv_heads = q.shape[1], k.shape[2]
  bq, bk = tiling.block_q, tiling.block_kv
  scale = q.shape[-1] ** -0.5

  def q_tile(i, state):
    o, m, l = state
    qs = i * bq
    qc = _grouped(_slice(q, qs, bq), kv_heads)
    acc = (_grouped(_slice(o, qs, bq), kv_heads), _rows(_slice(m, qs, bq), kv_heads)[..., 0],
           _rows(_slice(l, qs, bq), kv_heads)[..., 0])

    order, count = _causal_tiles(kv_pos[::bk], q_pos[qs + bq - 1], tiling.causal)

    def kv_tile(jj, acc):
      ks = order[jj] * bk
      qp, kp, qseg, kseg = _pos_seg_tiles(q_pos, kv_pos, q_seg, kv_seg, qs, ks, tiling)

      def update(acc, masked):
        o_c, m_c, l_c = acc  # [b, bq, hkv, g, d], [b, hkv, g, bq] x2
        s = _scores(qc, _slice(k, ks, bk), scale, precision)
        if masked:
          mask = _tile_mask(qp, kp, qseg, kseg, tiling.causal)
          s = jnp.where(mask, s, MASK_VALUE)
        m_new = jnp.maximum(m_c, s.max(-1))
        p = jnp.exp(s - m_new[..., None])
        if masked:
          p = jnp.where(mask, p, 0.0)
        alpha = jnp.exp(m_c - m_new)
        vc = _slice(v, ks, bk)
        pv = jnp.einsum("bhgqk,bkhd->bqhgd", p.astype(vc.dtype), vc, precision=precision,
                        preferred_element_type=jnp.float32)
        o_c = o_c * jnp.moveaxis(alpha, 3, 1)[..., None] + pv
        return o_c, m_new, l_c * alpha + p.sum(-1)

      return _by_kind(_tile_kind(qp, kp, qseg, kseg, tiling.causal), update, acc)

    o_c, m_c, l_c = lax.fori_loop(0, count, kv_tile, acc)
    o = lax.dynamic_update_slice_in_dim(o, o_c.reshape(o_c.shape[:2] + (-1, o_c.shape[-1])), qs, 1)
    m = lax.dynamic_update_slice_in_dim(m, _unrows(m_c), qs, 1)
    l = lax.dynamic_update_slice_in_dim(l, _unrows(l_c), qs, 1)
    return o, m, l

  return lax.fori_loop(0, n_q // bq, q_tile, state)


def init_state(q):
  """Empty softmax state for queries q: o zeros, max at MASK_VALUE, sum zeros (all float32)."""
  rows = q.shape[:3]
  return (jnp.zeros(q.shape, jnp.float32), jnp.full(rows, MASK_VALUE, jnp.float32),
          jnp.zeros(rows, jnp.float32))


def normalize(state):
  """(o, lse) of the contract from the running state: o float32 normalised (0 for rows that saw
  no key), lse `[b, n, heads]` float32 (MASK_VALUE for those rows)."""
  o, m, l = state
  seen = l > 0
  o = jnp.where(seen[..., None], o / jnp.where(seen, l, 1.0)[..., None], 0.0)
  return o, jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), MASK_VALUE)


def _precision(dtype):
  return lax.Precision.HIGHEST if dtype == jnp.float32 else None


def state_from(acc):
  """The running state (o, m, l) equal to a normalised (o, lse): m = lse, l = 1 (0 if unseen)."""
  o, lse = acc
  seen = lse > MASK_VALUE / 2
  return o.astype(jnp.float32), jnp.where(seen, lse, MASK_VALUE), seen.astype(jnp.float32)


def forward(q, k, v, mask, tiling, *, acc=None):
  """The contract's forward (see `lwm.ops.block_contract`): (o float32, lse float32), folded
  into `acc` in place when given."""
  state = init_state(q) if acc is None else state_from(acc)
  return normalize(block_forward(q, k, v, *mask, state, tiling, _precision(q.dtype)))


def backward(q, k, v, o, lse, do, mask, tiling, *, delta=None, grads=None):
  """The contract's backward: float32 (dq, dk, dv), added into `grads` in place when given."""
  if delta is None:
    delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)
  if grads is None:
    grads = tuple(jnp.zeros(x.shape, jnp.float32) for x in (q, k, v))
  return block_backward(q, k, v, do, lse, delta, *mask, *grads, tiling, _precision(q.dtype))


def block_backward(q, k, v, do, lse, delta, q_pos, kv_pos, q_seg, kv_seg, dq, dk, dv, tiling,
                   precision=None):
  """Gradients from one key/value block, added into the float32 accumulators dq, dk and dv.

  Uses the global log-sum-exp `lse` and `delta = rowsum(do * o)`, so each tile's probabilities are
  the final ones: per-block statistics would give wrong gradients.
  """
  n_kv, kv_heads = k.shape[1], k.shape[2]
  bq, bk = tiling.block_q, tiling.block_kv
  scale = q.shape[-1] ** -0.5

  def kv_tile(j, carry):
    dq, dk, dv = carry
    ks = j * bk
    kc, vc = _slice(k, ks, bk), _slice(v, ks, bk)
    # Open query tiles end at or after this key tile's first position (negated: "first <= limit").
    order, count = _causal_tiles(-q_pos[bq - 1::bq], -kv_pos[ks], tiling.causal)

    def q_tile(ii, acc):
      dq, dk_c, dv_c = acc
      qs = order[ii] * bq
      qp, kp, qseg, kseg = _pos_seg_tiles(q_pos, kv_pos, q_seg, kv_seg, qs, ks, tiling)
      qc, doc = _grouped(_slice(q, qs, bq), kv_heads), _grouped(_slice(do, qs, bq), kv_heads)

      def update(acc, masked):
        dq_c, dk_c, dv_c = acc
        p = jnp.exp(_scores(qc, kc, scale, precision) - _rows(_slice(lse, qs, bq), kv_heads))
        if masked:
          p = jnp.where(_tile_mask(qp, kp, qseg, kseg, tiling.causal), p, 0.0)
        dv_c += jnp.einsum("bhgqk,bqhgd->bkhd", p.astype(doc.dtype), doc, precision=precision,
                           preferred_element_type=jnp.float32)
        dp = jnp.einsum("bqhgd,bkhd->bhgqk", doc, vc, precision=precision,
                        preferred_element_type=jnp.float32)
        ds = (p * (dp - _rows(_slice(delta, qs, bq), kv_heads)) * scale).astype(q.dtype)
        dq_c = jnp.einsum("bhgqk,bkhd->bqhgd", ds, kc, precision=precision,
                          preferred_element_type=jnp.float32)
        dk_c += jnp.einsum("bhgqk,bqhgd->bkhd", ds, qc, precision=precision,
                           preferred_element_type=jnp.float32)
        return dq_c, dk_c, dv_c

      # Only tile-sized values pass through the branches: a full-size dq there is copied per tile.
      dq_c = jnp.zeros(qc.shape, jnp.float32)
      dq_c, dk_c, dv_c = _by_kind(_tile_kind(qp, kp, qseg, kseg, tiling.causal), update,
                                  (dq_c, dk_c, dv_c))
      dq = _add_slice(dq, dq_c.reshape(dq_c.shape[:2] + (-1, dq_c.shape[-1])), qs)
      return dq, dk_c, dv_c

    dq, dk_c, dv_c = lax.fori_loop(0, count, q_tile, (dq, _slice(dk, ks, bk), _slice(dv, ks, bk)))
    dk = lax.dynamic_update_slice_in_dim(dk, dk_c, ks, 1)
    dv = lax.dynamic_update_slice_in_dim(dv, dv_c, ks, 1)
    return dq, dk, dv

  return lax.fori_loop(0, n_kv // bk, kv_tile, (dq, dk, dv))
