"""Teacher-forced answers (V-NIAH's scoring): the answer's tokens are appended to the prompt, one
forward pass with ring attention runs over both, and the model's argmax at each answer position
is read. An answer is right when every position's argmax is the answer's next token. No decoding
loop and no cache: the cost is one prefill, and only the answer positions' logits are formed.

  forcer = TeacherForcer(loaded.model)
  predicted = forcer(prompt_ids, vision_mask, answer_ids)   # argmax ids, len(answer_ids)
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from lwm import ops
from lwm import sharding as shd
from lwm.eval import inference


def forced_argmax(model, tokens, vision_mask, lengths, read):
  """tokens, vision_mask: `[batch, seq]` natural order, padded (seq a multiple of 2 * sp * hp);
  lengths: `[batch]` tokens per row; read: `[batch, answer]` natural indices whose next-token
  argmax is wanted. Returns int32 `[batch, answer]`."""
  sp = shd.ring_shards(model.get_mesh())
  batch, seq = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
  segments = (positions < lengths[:, None]).astype(jnp.int32)  # 0 = padding
  zig = lambda a: ops.to_zigzag(a, sp)
  hidden = model.hidden_states(zig(tokens), zig(vision_mask), zig(positions), zig(segments))
  where = jnp.argsort(ops.to_zigzag(jnp.arange(seq)[None], sp)[0])  # natural -> zigzag index
  picked = jnp.take_along_axis(hidden, where[read][..., None], axis=1)
  return jnp.argmax(model.logits(picked), axis=-1).astype(jnp.int32)


class TeacherForcer:
  """One jitted forward per padded length; see the module docstring."""

  def __init__(self, model):
    self.mesh = model.get_mesh()
    self.graphdef, self.params = nnx.split(model, nnx.Param)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), self.params)
    self.param_shardings = shd.param_shardings(abstract, self.mesh)
    self._fns = {}

  def _fn(self, seq: int, answer: int):
    if (seq, answer) not in self._fns:
      graphdef = self.graphdef
      inputs = shd.named_sharding(self.mesh, ("batch", "seq"), (1, seq))
      replicated = NamedSharding(self.mesh, P())
      self._fns[seq, answer] = jax.jit(
          lambda params, t, m, n, r: forced_argmax(nnx.merge(graphdef, params), t, m, n, r),
          in_shardings=(self.param_shardings, inputs, inputs, replicated, replicated),
          out_shardings=replicated)
    return self._fns[seq, answer]

  def __call__(self, prompt, vision_mask, answer) -> list[int]:
    """prompt `[n]` ids (vision_mask `[n]` bool or None), answer `[a]` text ids -> the argmax id
    after prompt + answer[:i] for each i < a."""
    prompt, answer = np.asarray(prompt, np.int32), np.asarray(answer, np.int32)
    if len(answer) < 1:
      raise ValueError("teacher forcing needs at least one answer token")
    length = len(prompt) + len(answer)
    seq = inference.padded_length(length, shd.seq_shards(self.mesh))
    tokens = np.zeros((1, seq), np.int32)
    tokens[0, :length] = np.concatenate([prompt, answer])
    mask = np.zeros((1, seq), bool)
    if vision_mask is not None:
      mask[0, :len(prompt)] = vision_mask
    read = (len(prompt) - 1 + np.arange(len(answer)))[None].astype(np.int32)
    sharding = shd.named_sharding(self.mesh, ("batch", "seq"), (1, seq))
    out = self._fn(seq, len(answer))(self.params, jax.device_put(tokens, sharding),
                                     jax.device_put(mask, sharding),
                                     jnp.asarray([length], jnp.int32), jnp.asarray(read))
    return [int(t) for t in np.asarray(out)[0]]
