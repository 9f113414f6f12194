"""The reference path: sampling the way the authors' code does it, kept for same-run comparisons.

It differs from the fast path (`segdiff.predict.ensemble.sample_x0`) only in that

* G(I) is recomputed at every step: each step calls ``net(x, t, net.encode_image(image))``;
* the generations of an image run one after another (batch size 1), each with its own generator keyed
  exactly as the fast path keys it, so generation k sees the same x_T and the same per-step noise;
* fp16 autocast on a GPU (the authors trained and sampled in fp16); fp32 on a CPU.

Same sampler, same schedule, same clipping: on a CPU in fp32 both paths give the same x0 up to
floating-point reassociation (tests/test_fast_path.py states the tolerance).
"""

from __future__ import annotations

import torch

from ..config import PredictConfig
from ..diffusion import sample
from ..diffusion.schedule import Schedule
from ..predict.ensemble import autocast, noise_keys
from ..rng import GenerationNoise


def reference_amp(device: torch.device) -> str:
    """fp16 on CUDA (the authors' setting), fp32 elsewhere."""
    return "fp16" if device.type == "cuda" else "fp32"


@torch.no_grad()
def reference_sample_x0(
    net,
    sched: Schedule,
    image: torch.Tensor,
    keys: list,
    opts: PredictConfig,
    amp: str | None = None,
    batched: bool = False,
) -> torch.Tensor:
    """x0 of every generation, [B, G, H, W], computed the authors' way; arguments as `sample_x0`.

    amp: None = `reference_amp(device)`; otherwise as PredictConfig.amp (tests pass "fp32").
    batched: run the G generations of one image as one batch (G(I) still recomputed at every step, on
    the image repeated G times), the "authors' way, generations batched" variant of the benchmark.
    The default, one generation after another, is the reference path. opts.batch_generations, the
    speed flags and opts.amp are not used.
    """
    B, _, H, W = image.shape
    G = opts.generations
    device = image.device
    amp = amp or reference_amp(device)
    out = torch.empty(B, G, H, W, device=device)
    all_keys = noise_keys(keys, G, opts.seed)
    groups = [list(range(G))] if batched else [[k] for k in range(G)]
    for b in range(B):
        for ks in groups:
            noise = GenerationNoise.for_keys([all_keys[b][k] for k in ks], device)
            x_T = noise.randn((1, H, W), device)
            img = image[b : b + 1].expand(len(ks), -1, -1, -1)

            def eps_fn(x, t, img=img):
                with autocast(device, amp):
                    return net(x, t, net.encode_image(img))  # G(I) again at every step

            steps = opts.steps_for(len(sched))
            x0 = sample(opts.sampler, eps_fn, x_T, sched, noise, steps, opts.variance, opts.eta, opts.clip_x0)
            out[b, ks[0] : ks[-1] + 1] = x0[:, 0]
    return out
