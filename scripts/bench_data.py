"""Throughput of the data stage on this machine: video decoding, image tokenization, packing and
loading.

  python scripts/bench_data.py
  python scripts/bench_data.py --vqgan-configs small,lwm --seq-len 32768 --batch 8

Prints decode frames/s (decord + sampling + resize/crop of a 640x360 h264 clip), VQGAN tokenizer
frames/s per config (jitted encode), and the loader's tokens/s (reading the TFDS dataset, planning,
packing into [batch, seq_len] rows; with --mesh also zigzag and global arrays on 8 simulated CPU
devices). The loader runs in one process: its figure is per core.
"""
import argparse
import functools
import os
import tempfile
import time

from lwm import launch


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--vqgan-configs", default="tiny,small,lwm")
  parser.add_argument("--frames", type=int, default=64, help="frames decoded and tokenized")
  parser.add_argument("--seq-len", type=int, default=32768)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--examples", type=int, default=3000)
  parser.add_argument("--batches", type=int, default=40)
  parser.add_argument("--no-mesh", action="store_true", help="skip the on-mesh loader row")
  return parser.parse_args()


def timed(fn, repeats=1):
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def bench_decode(tmp, frames):
  from lwm.data import synthetic, video
  path = synthetic.write_video(os.path.join(tmp, "clip.mp4"),
                               synthetic.moving_frames(frames, 360, 640), "mp4", fps=30)
  sampling = video.FrameSampling(max_frames=frames)
  video.decode_video(path, 256, sampling)  # warm the file cache
  seconds = timed(lambda: video.decode_video(path, 256, sampling), 3)
  print(f"decode  640x360 h264 -> 256x256: {frames / seconds:9.1f} frames/s")
  return video.decode_video(path, 256, sampling)


def bench_vqgan(frames256, names, frames):
  from lwm.data import vqgan
  for name in names:
    config = vqgan.get_config(name)
    model = vqgan.create(config)
    count = frames if name != "lwm" else min(frames, 8)  # LWM's tokenizer is ~1 s/frame on a CPU
    data = vqgan.centre_crop_resize(frames256[:count], config.resolution)
    encoder = vqgan.FrameEncoder(model, batch_size=min(8, count))
    encoder(data[:encoder.batch_size])  # compile
    seconds = timed(functools.partial(encoder, data))
    print(f"vqgan   {name:<5} {config.resolution}px -> {config.grid}x{config.grid} codes: "
          f"{count / seconds:9.1f} frames/s")
    del model, encoder


def make_dataset(tmp, num_examples, seq_len):
  import numpy as np

  from lwm.data import chunks, dataset, loader, packing
  rng = np.random.default_rng(0)
  work = os.path.join(tmp, "work")
  os.makedirs(work)
  per_chunk = 500
  for c in range(0, num_examples, per_chunk):
    examples = []
    for line in range(c, min(c + per_chunk, num_examples)):
      frames = int(rng.integers(0, 9))  # like a corpus of captioned clips and text documents
      n = frames * 257 + int(rng.integers(20, 3000))
      tokens = rng.integers(0, 8000, n).astype(np.int32)
      vision = np.zeros(n, bool)
      vision[2:2 + frames * 257] = True
      examples.append({"tokens": tokens, "vision_mask": vision, "loss_mask": ~vision,
                       "line": line, "num_frames": frames})
    chunks.write_chunk(chunks.chunk_path(work, c // per_chunk), examples, [])
  dataset.build(tmp, work)
  loader.save_index(tmp, packing.build_index(dataset.load_examples(tmp)))
  return tmp


def bench_loader(data_dir, seq_len, batch, batches, mesh):
  import jax

  from lwm.data.loader import Loader
  loader = Loader(data_dir, seq_len=seq_len, global_batch_size=batch, seed=0, mesh=mesh)
  jax.block_until_ready(next(loader))
  start_tokens = loader.stats()["tokens"]
  start = time.perf_counter()
  for _ in range(batches):
    out = next(loader)
  jax.block_until_ready(out)
  seconds = time.perf_counter() - start
  stats = loader.stats()
  slots = batches * batch * seq_len
  where = "on mesh (zigzag, 8 CPU devices)" if mesh is not None else "NumPy"
  print(f"loader  {where:<32} {slots / seconds / 1e6:7.1f} M positions/s, "
        f"{(stats['tokens'] - start_tokens) / seconds / 1e6:7.1f} M tokens/s, "
        f"efficiency {stats['efficiency']:.3f}, {batch}x{seq_len}")


def main():
  args = parse_args()
  launch.set_device_count(8, replace=True)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from lwm import sharding
  with tempfile.TemporaryDirectory() as tmp:
    frames256 = bench_decode(tmp, args.frames)
    bench_vqgan(frames256, [n for n in args.vqgan_configs.split(",") if n], args.frames)
    data_dir = make_dataset(os.path.join(tmp, "ds"), args.examples, args.seq_len)
    bench_loader(data_dir, args.seq_len, args.batch, args.batches, None)
    if not args.no_mesh:
      mesh = sharding.make_mesh(1, 2, 1, 4)  # the kind of mesh training builds
      bench_loader(data_dir, args.seq_len, args.batch, args.batches, mesh)


if __name__ == "__main__":
  main()
