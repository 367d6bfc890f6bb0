"""Throughput of the data stage on this machine: video decoding, image tokenization, packing and
loading.

  python scripts/bench/data_pipeline.py
  python scripts/bench/data_pipeline.py --vqgan-configs small,lwm --seq-len 32768 --batch 8
  python scripts/bench/data_pipeline.py --workers 1,2 --skip-single --skip-loader  # Dask rows only

Prints decode frames/s (decord + sampling + resize/crop of a 640x360 h264 clip), VQGAN tokenizer
frames/s per config (jitted encode), and the loader's tokens/s (reading the TFDS dataset, planning,
packing into [batch, seq_len] rows; with --mesh also zigzag and global arrays on 8 simulated CPU
devices). The loader runs in one process: its figure is per core.

With --workers 1,2 it also runs preprocessing's own tasks on a local Dask cluster of that many
worker processes: decode tasks (`lwm.data.lines.decode_chunk`: the isolated decoder process,
decord, sampling, resize) and VQGAN encode calls in the workers, timed from submission to the last
result after one warm-up task per worker (the VQGAN loads and compiles once per process).
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
  parser.add_argument("--workers", default="", help="e.g. 1,2: Dask rows with these worker counts")
  parser.add_argument("--clips", type=int, default=8, help="Dask rows: clips of --frames frames")
  parser.add_argument("--encode-config", default="small", help="Dask rows: the VQGAN config")
  parser.add_argument("--skip-single", action="store_true", help="skip the one-process rows")
  parser.add_argument("--skip-loader", action="store_true", help="skip the loader rows")
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
  from lwm import vqgan
  from lwm.data.video import centre_crop_resize
  for name in names:
    config = vqgan.get_config(name)
    model = vqgan.create(config)
    count = frames if name != "lwm" else min(frames, 8)  # LWM's tokenizer is ~1 s/frame on a CPU
    data = centre_crop_resize(frames256[:count], config.resolution)
    encoder = vqgan.FrameEncoder(model, batch_size=min(8, count))
    encoder(data[:encoder.batch_size])  # compile
    seconds = timed(functools.partial(encoder, data))
    print(f"vqgan   {name:<5} {config.resolution}px -> {config.grid}x{config.grid} codes: "
          f"{count / seconds:9.1f} frames/s")
    del model, encoder


def make_dataset(tmp, num_examples, seq_len):
  import numpy as np

  from lwm.data import loader, packing, tfds_builder
  rng = np.random.default_rng(0)
  per_chunk = 500
  starts = range(0, num_examples, per_chunk)
  lengths, layout, size = [], [], 0
  for c, first in enumerate(starts):
    examples = []
    for line in range(first, min(first + per_chunk, num_examples)):
      frames = int(rng.integers(0, 9))  # like a corpus of captioned clips and text documents
      n = frames * 257 + int(rng.integers(20, 3000))
      tokens = rng.integers(0, 8000, n).astype(np.int32)
      vision = np.zeros(n, bool)
      vision[2:2 + frames * 257] = True
      examples.append({"tokens": tokens, "vision_mask": vision, "loss_mask": ~vision,
                       "line": line, "num_frames": frames})
    size += tfds_builder.write_shard(tfds_builder.shard_path(tmp, c, len(starts)), examples,
                                     os.path.join(tmp, "work"))
    lengths.append(len(examples))
    layout += [packing.example_layout(e) for e in examples]
  tfds_builder.write_info(tmp, lengths, size)
  loader.save_index(tmp, {f: np.asarray([r[f] for r in layout], np.int64)
                          for f in packing.INDEX_FIELDS})
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


def _encode_random(vqgan_dir, batch, frames, seed):
  """Encodes `frames` random frames in a worker (the VQGAN is loaded once per process)."""
  import numpy as np
  from lwm.data import lines
  encoder = lines.frame_encoder(vqgan_dir, batch)
  r = encoder.config.resolution
  encoder(np.random.default_rng(seed).integers(0, 256, (frames, r, r, 3), dtype=np.uint8))
  return frames


def _decode_frames(options, index, chunk_lines):
  """Runs a decode task in a worker; returns only the frame count (frames stay in the worker, as
  they do in preprocessing when the encode task runs where the decode task ran)."""
  from lwm.data import lines
  decoded = lines.decode_chunk(options, index, chunk_lines, "bench")
  return sum(len(frames) for _, _, frames, _ in decoded["lines"] if frames is not None)


def bench_cluster(tmp, worker_counts, clips, frames, config_name):
  """Decode and encode frames/s of preprocessing's tasks on local Dask clusters."""
  import dataclasses
  import json
  from lwm import vqgan
  from lwm.data import dask_cluster, lines, synthetic
  from lwm.data.preprocess import PreprocessOptions
  from lwm.data import video as video_lib
  from lwm.data.video import FrameSampling
  root = os.path.join(tmp, "cluster")
  os.makedirs(os.path.join(root, "clips"))
  vq = os.path.join(root, "vq")
  vqgan.save(vq, vqgan.create(vqgan.get_config(config_name), 0))
  # Decode tasks read only the resolution from the VQGAN folder: decode at LWM's 256x256.
  os.makedirs(os.path.join(root, "vq256"))
  with open(os.path.join(root, "vq256", "config.json"), "w") as f:
    json.dump(dataclasses.asdict(vqgan.get_config("lwm")), f)
  video = synthetic.moving_frames(frames, 360, 640)
  raw = []
  for i in range(clips):
    synthetic.write_video(os.path.join(root, f"clips/{i}.mp4"), video, "mp4", fps=30)
    raw.append((i + 1, json.dumps({"video": f"clips/{i}.mp4", "text": "x"}).encode()))
  options = PreprocessOptions(manifest=os.path.join(root, "m.jsonl"),
                              output=os.path.join(root, "o"), tokenizer="",
                              vqgan=os.path.join(root, "vq256"),
                              sampling=FrameSampling(max_frames=frames))
  batch, size = 16, 256
  for workers in worker_counts:
    with dask_cluster.connect(workers=workers) as client:
      # One warm-up per worker (pinned), so the timed part has no start-up in it.
      warm = []
      for w, address in enumerate(client.scheduler_info(n_workers=-1)["workers"]):
        warm += [client.submit(lines.decode_chunk, options, -1 - w, raw[:1], "warm", pure=False,
                               workers=[address]),
                 client.submit(_encode_random, vq, batch, batch, w, pure=False, workers=[address])]
      client.gather(warm)
      start = time.perf_counter()  # A/B: the same clips decoded in this process, right before
      for i in range(clips):
        video_lib.decode_video(os.path.join(root, f"clips/{i}.mp4"), size, options.sampling)
      here = clips * frames / (time.perf_counter() - start)
      start = time.perf_counter()
      decoded = client.gather([client.submit(_decode_frames, options, i, [line], pure=False)
                               for i, line in enumerate(raw)])
      decode = sum(decoded) / (time.perf_counter() - start)
      _encode_random(vq, batch, batch, 0)  # compiles here; then A/B as for decoding
      start = time.perf_counter()
      here_encode = sum(_encode_random(vq, batch, 4 * batch, i) for i in range(2))
      here_encode /= time.perf_counter() - start
      start = time.perf_counter()
      done = client.gather([client.submit(_encode_random, vq, batch, 4 * batch, i, pure=False)
                            for i in range(2 * workers)])
      encode = sum(done) / (time.perf_counter() - start)
    print(f"dask    {workers} local worker(s): decode 640x360 h264 -> {size}px {decode:7.1f} "
          f"frames/s ({here:.1f} in this process just before), VQGAN {config_name} encode "
          f"{encode:7.1f} frames/s ({here_encode:.1f} in this process just before)")


def main():
  args = parse_args()
  launch.set_device_count(8, replace=True)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from lwm import sharding
  with tempfile.TemporaryDirectory() as tmp:
    if not args.skip_single:
      frames256 = bench_decode(tmp, args.frames)
      bench_vqgan(frames256, [n for n in args.vqgan_configs.split(",") if n], args.frames)
    if args.workers:
      bench_cluster(tmp, [int(n) for n in args.workers.split(",")], args.clips, args.frames,
                    args.encode_config)
    if args.skip_loader:
      return
    data_dir = make_dataset(os.path.join(tmp, "ds"), args.examples, args.seq_len)
    bench_loader(data_dir, args.seq_len, args.batch, args.batches, None)
    if not args.no_mesh:
      mesh = sharding.make_mesh(1, 2, 1, 4)  # the kind of mesh training builds
      bench_loader(data_dir, args.seq_len, args.batch, args.batches, mesh)


if __name__ == "__main__":
  main()
