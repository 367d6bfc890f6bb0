"""The image tokenizer: a Flax VQGAN (LWM's architecture), its files, LWM's import and training.

  from lwm import vqgan
  model = vqgan.create(vqgan.get_config("tiny"), seed=0)    # or vqgan.load(dir), vqgan.from_lwm(f)
  codes = vqgan.FrameEncoder(model)(frames)                  # uint8 [n, R, R, 3] -> [n, codes]

`model.py` (configs, modules, encoder), `store.py` (config.json + params.npz directories, also
under a model directory's assets/), `lwm_format.py` (LWM's released pickle), `train.py` (training
on frames).
"""
from lwm.vqgan.lwm_format import from_lwm
from lwm.vqgan.model import (VQGAN, FrameEncoder, VQGANConfig, create, get_config, psnr,
                             to_pixels)
from lwm.vqgan.store import (load, load_config, recorded_vision_ids, resolve, save,
                             with_params)

__all__ = ["VQGAN", "VQGANConfig", "FrameEncoder", "create", "get_config", "psnr", "to_pixels",
           "load", "load_config", "recorded_vision_ids", "resolve", "save", "with_params",
           "from_lwm"]
