"""Fused Pallas kernels for the block contract (`lwm.ops.block_contract`): flash attention with
the mask given by global positions and separate query / key segment ids.

One kernel body per pass, written once; `backend` picks the compiler parameters ("gpu": Triton
lowering, "tpu": Mosaic) and `interpret=True` runs the very same kernels on a CPU.

- forward: grid (query tiles, batch, heads); a program keeps its query tile and walks the key
  tiles with an online softmax in float32, starting from the earlier (o, lse) it is given (a
  ring's running result, aliased to the outputs so it is updated in place), then writes o
  normalised (float32) and the natural-log lse.
- backward: two kernels with the given global lse and delta = rowsum(do * o). dq: grid (query
  tiles, batch, heads), walking the key tiles; it adds into the float32 dq accumulator in place
  (input/output aliasing, so a ring keeps one dq per shard). dk, dv: grid (key tiles, batch,
  heads), walking the query tiles; each query head writes its own float32 dk, dv and the heads
  of a group are summed afterwards (grouped-query attention; a block's dk, dv are small).

Masking: a tile is skipped (`lax.cond`) when no (query, key) pair in it can be visible: causally
(the largest query position is below the smallest key position) or by segments (the ranges of
non-padding ids cannot meet). Inside a visited tile the mask is computed per element from the
positions and ids. Positions, not a static causal flag or an offset, carry the causal structure,
so the same kernel serves any ring step of any layout (natural, zigzag, the ring's pieces) and
needs no per-step variants.

Shapes: q, do `[batch, n, heads, head_dim]`; k, v `[batch, m, kv_heads, head_dim]`; positions
`[n]`, `[m]` int32; segment ids `[batch, n]`, `[batch, m]` int32 or None; lse, delta
`[batch, n, heads]` float32.
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from lwm.ops.block_contract import MASK_VALUE, empty

# Tile targets (query, key tokens) per backend and pass; a tile is the largest divisor of the
# length not above its target (and not above the ring's tiles). Mosaic wants >= 128 lanes.
TILES = {("gpu", "forward"): (128, 64), ("gpu", "backward"): (64, 64),
         ("tpu", "forward"): (128, 128), ("tpu", "backward"): (128, 128)}
_INT_MAX = 2**31 - 1


def _fit(length, target):
  for size in range(min(length, target), 0, -1):
    if length % size == 0:
      return size
  return 1


def _compiler_params(backend, head_dim):
  if backend == "gpu":
    from jax.experimental.pallas import triton as plgpu
    return plgpu.CompilerParams(num_warps=4 if head_dim <= 64 else 8, num_stages=2)
  from jax.experimental.pallas import tpu as pltpu
  return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel"))


def _dot(a, b, contract=(1, 0)):
  """a @ b (contract=(1, 0)), a @ b.T (1, 1) or a.T @ b (0, 0), accumulated in float32."""
  precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
  return lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())), precision=precision,
                         preferred_element_type=jnp.float32)


def _segment_range(seg):
  """Smallest and largest non-padding id of a tile (empty: INT_MAX, -1)."""
  return jnp.min(jnp.where(seg == 0, _INT_MAX, seg)), jnp.max(jnp.where(seg == 0, -1, seg))


def _tile_needed(q_pos, kv_pos, q_seg, kv_seg, causal):
  """False when every pair of the tile is masked (the tile is skipped)."""
  needed = jnp.bool_(True)
  if causal:
    needed = jnp.max(q_pos) >= jnp.min(kv_pos)
  if q_seg is not None:
    q_lo, q_hi = _segment_range(q_seg)
    k_lo, k_hi = _segment_range(kv_seg)
    needed = needed & (q_lo <= k_hi) & (k_lo <= q_hi)
  return needed


def _if_needed(masks, causal, update, carry):
  """update(carry) if the tile may hold a visible pair, else carry (no branch when nothing is
  ever masked: a constant predicate is not lowered by Triton)."""
  if not causal and masks[2] is None:
    return update(carry)
  return lax.cond(_tile_needed(*masks, causal), update, lambda c: c, carry)


def _visible(q_pos, kv_pos, q_seg, kv_seg, causal):
  """`[bq, bk]` bool, or None when nothing is masked (non-causal, one document)."""
  mask = None
  if causal:
    mask = q_pos[:, None] >= kv_pos[None, :]
  if q_seg is not None:
    same = (q_seg[:, None] == kv_seg[None, :]) & (q_seg[:, None] != 0)
    mask = same if mask is None else mask & same
  return mask


def _probabilities(q, k, scale, row_stat, mask):
  """exp(q k^T * scale - row_stat) with masked entries 0: `[bq, bk]` float32."""
  s = _dot(q, k, (1, 1)) * scale
  if mask is not None:
    s = jnp.where(mask, s, MASK_VALUE)
  p = jnp.exp(s - row_stat[:, None])
  return p if mask is None else jnp.where(mask, p, 0.0)


def _split(refs, has_seg):
  """(q_pos, kv_pos, q_seg, kv_seg) refs (segments None when absent) and the remaining refs."""
  if has_seg:
    return tuple(refs[:4]), refs[4:]
  return (refs[0], refs[1], None, None), refs[2:]


def _vec(ref, index=slice(None)):
  """A row vector from a ref that is `[length]` (GPU layout) or `[1, length]` (TPU layout)."""
  return ref[index] if len(ref.shape) == 1 else ref[0, index]


def _store_vec(ref, value):
  ref[...] = value if len(ref.shape) == 1 else value[None, :]


def _load_masks(mask_refs, q_slice, kv_slice):
  q_pos, kv_pos, q_seg, kv_seg = mask_refs
  seg = lambda ref, s: None if ref is None else _vec(ref, s)
  return _vec(q_pos, q_slice), _vec(kv_pos, kv_slice), seg(q_seg, q_slice), seg(kv_seg, kv_slice)


def _forward_kernel(*refs, causal, has_seg, block_kv, scale):
  mask_refs, rest = _split(refs, has_seg)
  q_ref, k_ref, v_ref, o_in_ref, lse_in_ref, o_ref, lse_ref = rest
  q = q_ref[...]

  def kv_tile(j, carry):
    kv_slice = pl.ds(j * block_kv, block_kv)
    masks = _load_masks(mask_refs, slice(None), kv_slice)

    def update(carry):
      o, m, total = carry
      s = _dot(q, k_ref[kv_slice, :], (1, 1)) * scale
      mask = _visible(*masks, causal)
      if mask is not None:
        s = jnp.where(mask, s, MASK_VALUE)
      m_new = jnp.maximum(m, jnp.max(s, axis=1))
      p = jnp.exp(s - m_new[:, None])
      if mask is not None:
        p = jnp.where(mask, p, 0.0)
      alpha = jnp.exp(m - m_new)
      v = v_ref[kv_slice, :]
      o = o * alpha[:, None] + _dot(p.astype(v.dtype), v)
      return o, m_new, total * alpha + jnp.sum(p, axis=1)

    return _if_needed(masks, causal, update, carry)

  # The earlier (o, lse) as a running state: m = lse, sum 1 (0 for rows that saw no key yet).
  lse_in = _vec(lse_in_ref)
  seen_before = lse_in > MASK_VALUE / 2
  init = (o_in_ref[...], jnp.where(seen_before, lse_in, MASK_VALUE),
          seen_before.astype(jnp.float32))
  o, m, total = lax.fori_loop(0, k_ref.shape[0] // block_kv, kv_tile, init)
  seen = total > 0
  safe_total = jnp.where(seen, total, 1.0)
  o_ref[...] = jnp.where(seen[:, None], o / safe_total[:, None], 0.0).astype(o_ref.dtype)
  _store_vec(lse_ref, jnp.where(seen, m + jnp.log(safe_total), MASK_VALUE))


def _dq_kernel(*refs, causal, has_seg, block_kv, scale):
  mask_refs, rest = _split(refs, has_seg)
  q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_in_ref, dq_ref = rest
  q, do, lse, delta = q_ref[...], do_ref[...], _vec(lse_ref), _vec(delta_ref)

  def kv_tile(j, dq):
    kv_slice = pl.ds(j * block_kv, block_kv)
    masks = _load_masks(mask_refs, slice(None), kv_slice)

    def update(dq):
      k = k_ref[kv_slice, :]
      p = _probabilities(q, k, scale, lse, _visible(*masks, causal))
      ds = p * (_dot(do, v_ref[kv_slice, :], (1, 1)) - delta[:, None])
      return dq + _dot(ds.astype(k.dtype), k) * scale

    return _if_needed(masks, causal, update, dq)

  dq = lax.fori_loop(0, k_ref.shape[0] // block_kv, kv_tile, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = dq_in_ref[...] + dq


def _dkdv_kernel(*refs, causal, has_seg, block_q, scale):
  mask_refs, rest = _split(refs, has_seg)
  q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref = rest
  k, v = k_ref[...], v_ref[...]

  def q_tile(i, carry):
    dk, dv = carry
    q_slice = pl.ds(i * block_q, block_q)
    masks = _load_masks(mask_refs, q_slice, slice(None))

    def update(carry):
      dk, dv = carry
      q, do = q_ref[q_slice, :], do_ref[q_slice, :]
      p = _probabilities(q, k, scale, _vec(lse_ref, q_slice), _visible(*masks, causal))
      dv = dv + _dot(p.astype(do.dtype), do, (0, 0))
      ds = p * (_dot(do, v, (1, 1)) - _vec(delta_ref, q_slice)[:, None])
      return dk + _dot(ds.astype(q.dtype), q, (0, 0)) * scale, dv

    return _if_needed(masks, causal, update, carry)

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(0, q_ref.shape[0] // block_q, q_tile, (zeros, zeros))
  dk_ref[...], dv_ref[...] = dk, dv


class _Layout:
  """How the arrays meet the kernels on a backend, as BlockSpecs over a grid (tile, batch, head).

  "gpu" (Triton) reads the contract's layouts directly: `[batch, len, heads, dim]`, positions
  `[len]`, segment ids `[batch, len]`, row statistics `[batch, heads, len]`. "tpu" (Mosaic)
  wants the last two block dimensions to be whole or multiples of (8, 128), so arrays go
  head-major `[batch, heads, len, dim]` and vectors get a unit sublane dimension: positions
  `[1, len]`, segment ids `[batch, 1, len]`, row statistics `[batch, heads, 1, len]`. The kernels
  see the same tiles either way. A `block` of None takes the whole length.
  """

  def __init__(self, backend):
    self.tpu = backend == "tpu"

  def heads(self, x):
    return jnp.swapaxes(x, 1, 2) if self.tpu else x

  def unheads(self, x):
    return jnp.swapaxes(x, 1, 2) if self.tpu else x

  def heads_shape(self, batch, length, heads, head_dim):
    return (batch, heads, length, head_dim) if self.tpu else (batch, length, heads, head_dim)

  def heads_spec(self, length, block, head_dim, groups=1):
    size, tiled = (length, False) if block is None else (block, True)
    t = lambda i: i if tiled else 0
    if self.tpu:
      return pl.BlockSpec((None, None, size, head_dim), lambda i, b, h: (b, h // groups, t(i), 0))
    return pl.BlockSpec((None, size, None, head_dim), lambda i, b, h: (b, t(i), h // groups, 0))

  def rows(self, x):
    """`[batch, len, heads]` -> the kernel layout."""
    x = jnp.swapaxes(x.astype(jnp.float32), 1, 2)
    return x[:, :, None] if self.tpu else x

  def unrows(self, x):
    return jnp.swapaxes(x[:, :, 0] if self.tpu else x, 1, 2)

  def rows_spec(self, length, block):
    size, tiled = (length, False) if block is None else (block, True)
    t = lambda i: i if tiled else 0
    if self.tpu:
      return pl.BlockSpec((None, None, 1, size), lambda i, b, h: (b, h, 0, t(i)))
    return pl.BlockSpec((None, None, size), lambda i, b, h: (b, h, t(i)))

  def rows_shape(self, batch, heads, length):
    shape = (batch, heads, 1, length) if self.tpu else (batch, heads, length)
    return jax.ShapeDtypeStruct(shape, jnp.float32)

  def masks(self, mask, q_block, kv_block):
    """(arrays, BlockSpecs) of positions and segment ids; a side with a block is tiled."""
    def specs(length, block):
      size, tiled = (length, False) if block is None else (block, True)
      t = lambda i: i if tiled else 0
      if self.tpu:
        return (pl.BlockSpec((1, size), lambda i, b, h: (0, t(i))),
                pl.BlockSpec((None, 1, size), lambda i, b, h: (b, 0, t(i))))
      return (pl.BlockSpec((size,), lambda i, b, h: (t(i),)),
              pl.BlockSpec((None, size), lambda i, b, h: (b, t(i))))

    q_pos_spec, q_seg_spec = specs(mask.q_positions.shape[0], q_block)
    kv_pos_spec, kv_seg_spec = specs(mask.kv_positions.shape[0], kv_block)
    vec = (lambda x: x[None]) if self.tpu else (lambda x: x)
    seg = (lambda x: x[:, None]) if self.tpu else (lambda x: x)
    arrays = [vec(mask.q_positions), vec(mask.kv_positions)]
    block_specs = [q_pos_spec, kv_pos_spec]
    if mask.q_segment_ids is not None:
      arrays += [seg(mask.q_segment_ids), seg(mask.kv_segment_ids)]
      block_specs += [q_seg_spec, kv_seg_spec]
    return arrays, block_specs


def _check_triton(interpret, backend, **sizes):
  """Triton tiles are powers of two of at least 16 tokens (whole-length blocks included)."""
  bad = {name: size for name, size in sizes.items() if size < 16 or size & (size - 1)}
  if backend == "gpu" and not interpret and bad:
    raise ValueError(f"the Triton kernel needs powers of two >= 16 for {bad}; choose such sequence "
                     "and tile lengths or attention impl 'xla'")


def _check(q, k, mask, backend):
  if backend not in ("gpu", "tpu"):
    raise ValueError(f"backend must be 'gpu' or 'tpu', got {backend!r}")
  if (mask.q_segment_ids is None) != (mask.kv_segment_ids is None):
    raise ValueError("pass segment ids for both queries and keys, or for neither")
  if q.shape[2] % k.shape[2] or q.shape[3] != k.shape[3]:
    raise ValueError(f"q {q.shape} and k {k.shape}: heads must be a multiple of kv_heads and "
                     "head dims equal")


def forward(q, k, v, mask, tiling, *, acc=None, backend="gpu", interpret=False):
  """The contract's forward as one fused kernel: (o float32, lse float32 `[batch, n, heads]`),
  folded into the earlier result `acc` = (o, lse) when given."""
  _check(q, k, mask, backend)
  acc_o, acc_lse = empty(q) if acc is None else acc
  batch, n, heads, head_dim = q.shape
  m, groups = k.shape[1], heads // k.shape[2]
  target_q, target_kv = TILES[backend, "forward"]
  block_q = _fit(n, min(tiling.block_q, target_q))
  block_kv = _fit(m, min(tiling.block_kv, target_kv))
  _check_triton(interpret, backend, queries=n, keys=m, block_q=block_q, block_kv=block_kv,
                head_dim=head_dim)
  lay = _Layout(backend)
  arrays, specs = lay.masks(mask, block_q, None)
  kernel = functools.partial(_forward_kernel, causal=tiling.causal,
                             has_seg=mask.q_segment_ids is not None, block_kv=block_kv,
                             scale=1 / math.sqrt(head_dim))
  q_tile, whole_kv = lay.heads_spec(n, block_q, head_dim), lay.heads_spec(m, None, head_dim, groups)
  o, lse = pl.pallas_call(
      kernel, grid=(n // block_q, batch, heads),
      in_specs=specs + [q_tile, whole_kv, whole_kv, q_tile, lay.rows_spec(n, block_q)],
      out_specs=[q_tile, lay.rows_spec(n, block_q)],
      out_shape=[jax.ShapeDtypeStruct(lay.heads_shape(batch, n, heads, head_dim), jnp.float32),
                 lay.rows_shape(batch, heads, n)],
      input_output_aliases={len(arrays) + 3: 0, len(arrays) + 4: 1},
      compiler_params=_compiler_params(backend, head_dim), interpret=interpret,
      name="lwm_flash_forward")(*arrays, *map(lay.heads, (q, k, v, acc_o.astype(jnp.float32))),
                                lay.rows(acc_lse))
  return lay.unheads(o), lay.unrows(lse)


def backward(q, k, v, o, lse, do, mask, tiling, *, delta=None, grads=None, backend="gpu",
             interpret=False):
  """The contract's backward as two fused kernels: float32 (dq, dk, dv), added into `grads`."""
  _check(q, k, mask, backend)
  batch, n, heads, head_dim = q.shape
  m, kv_heads = k.shape[1], k.shape[2]
  groups = heads // kv_heads
  if delta is None:
    delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)
  if grads is None:
    grads = tuple(jnp.zeros(x.shape, jnp.float32) for x in (q, k, v))
  lay = _Layout(backend)
  rows = [lay.rows(x) for x in (lse, delta)]
  q_h, k_h, v_h, do_h = map(lay.heads, (q, k, v, do.astype(q.dtype)))
  scale, has_seg = 1 / math.sqrt(head_dim), mask.q_segment_ids is not None
  params = _compiler_params(backend, head_dim)
  target_q, target_kv = TILES[backend, "backward"]
  block_q = _fit(n, min(tiling.block_q, target_q))
  block_kv = _fit(m, min(tiling.block_kv, target_kv))
  _check_triton(interpret, backend, queries=n, keys=m, block_q=block_q, block_kv=block_kv,
                head_dim=head_dim)

  arrays, specs = lay.masks(mask, block_q, None)
  q_tile, whole_kv = lay.heads_spec(n, block_q, head_dim), lay.heads_spec(m, None, head_dim, groups)
  row_tile = lay.rows_spec(n, block_q)
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, causal=tiling.causal, has_seg=has_seg, block_kv=block_kv,
                        scale=scale),
      grid=(n // block_q, batch, heads),
      in_specs=specs + [q_tile, whole_kv, whole_kv, q_tile, row_tile, row_tile, q_tile],
      out_specs=q_tile,
      out_shape=jax.ShapeDtypeStruct(lay.heads_shape(batch, n, heads, head_dim), jnp.float32),
      input_output_aliases={len(arrays) + 6: 0},
      compiler_params=params, interpret=interpret,
      name="lwm_flash_backward_dq")(*arrays, q_h, k_h, v_h, do_h, *rows, lay.heads(grads[0]))

  arrays, specs = lay.masks(mask, None, block_kv)
  whole_q, whole_rows = lay.heads_spec(n, None, head_dim), lay.rows_spec(n, None)
  kv_tile = lay.heads_spec(m, block_kv, head_dim, groups)
  per_head = jax.ShapeDtypeStruct(lay.heads_shape(batch, m, heads, head_dim), jnp.float32)
  dk, dv = pl.pallas_call(
      functools.partial(_dkdv_kernel, causal=tiling.causal, has_seg=has_seg, block_q=block_q,
                        scale=scale),
      grid=(m // block_kv, batch, heads),
      in_specs=specs + [whole_q, kv_tile, kv_tile, whole_q, whole_rows, whole_rows],
      out_specs=[lay.heads_spec(m, block_kv, head_dim)] * 2,
      out_shape=[per_head, per_head],
      compiler_params=params, interpret=interpret,
      name="lwm_flash_backward_dkdv")(*arrays, q_h, k_h, v_h, do_h, *rows)
  fold = lambda x: lay.unheads(x).reshape(batch, m, kv_heads, groups, head_dim).sum(3)
  return lay.unheads(dq), grads[1] + fold(dk), grads[2] + fold(dv)
