"""Multiple generations (paper 4.1): G(I) once per image or window, generations batched and chunked.

probability = mean over generations of clamp((x0 + 1) / 2, 0, 1); uncertainty = their per-pixel
standard deviation; mask = probability >= 0.5.

K classes (x0 with K one-hot channels, `summarise_classes`): generation g's class distribution at a pixel
is q_gk = clamp((x0_gk + 1) / 2, 0, 1) renormalised over the K channels (uniform where every channel is at
-1 or below); class probabilities = mean over generations of q_g; label = argmax; uncertainty = entropy of
the mean distribution (nats; at most log K) and disagreement = fraction of generations whose own argmax
differs from the label.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace

import torch

from ..config import COMPILE_MODES, PredictConfig
from ..diffusion import sample
from ..diffusion.gaussian import eps_from_x0, onepass_logits, q_sample, x0_from_eps, x0_from_output
from ..diffusion.schedule import Schedule
from ..rng import GenerationNoise
from . import compiling


def autocast(device: torch.device, amp: str):
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "fp32"
    if amp == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device.type, dtype=dtype)


def noise_keys(image_keys: list, generations: int, seed: int) -> list[list[tuple]]:
    """The key of generation k of image/window j: (seed, image key, k)."""
    return [[(seed, *(key if isinstance(key, tuple) else (key,)), k) for k in range(generations)] for key in image_keys]


@torch.no_grad()
def sample_x0(
    net,
    sched: Schedule,
    image: torch.Tensor,
    keys: list,
    opts: PredictConfig,
    on_step: Callable[[], None] | None = None,
    pad_rows: int | None = None,
) -> torch.Tensor:
    """x0 of every generation for a batch of normalised images.

    image: [B, C, H, W] (H, W multiples of the network stride); keys: one key per image (an int, a str or
    a tuple) from which the noise of its generations is drawn. Returns [B, G, H, W] in x0 space, or
    [B, G, K, H, W] for a K-class network (net.cfg.mask_channels = K > 1).
    The network batch holds b images x g generations with b * g <= batch_generations.
    on_step, if given, is called after every network call of the sampling loop (progress reporting);
    `network_calls` says how many there will be.

    compile="auto" is resolved here for this call's work unless the caller resolved it for more work
    (segdiff.predict.compiling). While compiling, every network batch is padded to `pad_rows` rows
    (default: a full chunk for this B, `chunk_rows`) with noise rows of their own whose outputs are dropped:
    one shape, no recompiles. The kept generations are those of the unpadded batch (noise keyed per generation).
    """
    B, _, H, W = image.shape
    G = opts.generations
    M = getattr(getattr(net, "cfg", None), "mask_channels", 1)
    device = image.device
    sampling_steps = opts.steps_for(len(sched))
    if opts.compile == "auto":
        opts = replace(opts, compile=compiling.decide(net, opts, device, [((H, W), B)], sampling_steps).mode)
    fwd = prepare_net(net, opts)
    per_batch = max(1, opts.batch_generations)
    pad = opts.compile != "off"
    rows = pad_rows or compiling.chunk_rows(B, G, per_batch)
    with autocast(device, opts.amp):
        cond = net.encode_image(image)  # once per image, reused by every step and generation
    prediction = output_kind(net)
    if prediction == "onepass":  # the baseline segmenter: one deterministic map, the same for every generation
        with autocast(device, opts.amp):
            logits = onepass_logits(fwd, cond, (B, M, H, W))
        if on_step is not None:  # its one network call (progress bars count it)
            on_step()
        if M > 1:  # K classes: 2 softmax - 1, the one-hot x0 space
            return x0_from_output(logits.float(), "logits")[:, None].expand(B, G, M, H, W).clone()
        return torch.tanh(logits.float() / 2).expand(B, G, H, W).clone()  # (x0 + 1) / 2 = sigmoid(logits)
    # issue 20: logits networks, self-conditioning (the previous step's x0 is fed), a chain started below T
    x0_output = getattr(getattr(net, "cfg", None), "x0_output", "direct")
    self_cond = getattr(getattr(net, "cfg", None), "self_condition", False)
    n0 = None if opts.start_t is None else opts.start_t + 1  # the warm start walks the schedule's first n0 steps
    chain = sched if n0 is None else Schedule(sched.betas[:n0], sched.timesteps[:n0], sched.alphas[:n0])
    # eq. 5's conversions between x0 and eps at the original timestep (a respaced chain, and the warm start's
    # prefix of the schedule, keep the original alpha_bar at their steps), so that the sampler's x0 from this
    # eps is the network's x0; computed once on the device
    coefs = sched.on(device)
    out = torch.empty(B, G, M, H, W, device=device)
    all_keys = noise_keys(keys, G, opts.seed)
    for b0, b1, g0, g1 in generation_chunks(B, G, per_batch):
        chunk_keys = [k for keys_b in all_keys[b0:b1] for k in keys_b[g0:g1]]
        n = len(chunk_keys)
        c = cond[b0:b1]  # broadcast over the g1 - g0 generations of each image, no copy
        if pad and n < rows:
            chunk_keys += [(opts.seed, "pad", i) for i in range(rows - n)]
            if G < per_batch:  # whole images per batch: pad with copies of the last image's G(I)
                c = torch.cat([c, c[-1:].expand(rows // G - (b1 - b0), *c.shape[1:])])
        noise = GenerationNoise.for_keys(chunk_keys, device)
        x_T = noise.randn((M, H, W), device)

        state: dict = {"x0": None}  # this chunk's latest x0 estimate (self-conditioning, the warm start)

        def eps_fn(x, t, c=c, state=state):
            with autocast(device, opts.amp):
                y = fwd(x, t, c, state["x0"]) if self_cond else fwd(x, t, c)
            if on_step is not None:
                on_step()
            if prediction == "x0":  # eps of eq. 5, so that every sampler runs its one eps code path
                x0 = x0_from_output(y.float(), x0_output)
                eps = eps_from_x0(x, t, x0, coefs)
            else:
                eps, x0 = y, (x0_from_eps(x, t, y.float(), coefs) if self_cond or opts.start_t is not None else None)
            if x0 is not None:
                state["x0"] = x0.clamp(-1.0, 1.0)
            return eps

        if opts.start_t is not None:  # one pass at T - 1 from pure noise, its x0 noised to start_t
            eps_fn(x_T, sched.timesteps[-1:].to(device).expand(x_T.shape[0]))
            t_s = torch.full((x_T.shape[0],), int(sched.timesteps[opts.start_t]), device=device)
            x_T = q_sample(state["x0"], t_s, noise.randn((M, H, W), device), sched)
        x0 = sample(opts.sampler, eps_fn, x_T, chain, noise, sampling_steps, opts.variance, opts.eta, opts.clip_x0)
        out[b0:b1, g0:g1] = x0[:n].view(b1 - b0, g1 - g0, M, H, W)
    return out[:, :, 0] if M == 1 else out


def network_calls(batch: int, opts: PredictConfig, T: int, prediction: str = "eps") -> int:
    """How many network calls `sample_x0` makes for `batch` images under `opts` with a model of T diffusion
    steps that predicts `prediction` (`output_kind`): one for a one-pass model, whatever the generations; the
    warm start (predict.start_t) adds its first pass to every chunk."""
    if prediction == "onepass":
        return 1
    calls = opts.steps_for(T) + (opts.start_t is not None)
    return compiling.calls_for(batch, opts.generations, opts.batch_generations, calls)


def output_kind(net) -> str:
    """What the network outputs: its ModelConfig.prediction ("eps", "x0" or "onepass"); eps by default."""
    return getattr(getattr(net, "cfg", None), "prediction", "eps")


class _CompiledCache(dict):
    """Compiled versions of a network, kept on it; deepcopy and pickle of the network start empty."""

    def __deepcopy__(self, memo):
        return _CompiledCache()

    def __reduce__(self):
        return (_CompiledCache, ())


def prepare_net(net, opts: PredictConfig):
    """The callable the sampling loop runs: `net` itself unless a speed flag of `opts` is on.

    channels_last converts the weights of `net` in place (numerically the same network). A compiled
    module (shapes specialised, dynamic=False) is cached on `net`, so that repeated calls do not compile
    again; its kernels persist in the cache folder (opts.compile_cache). compile="auto" must be resolved
    before (sample_x0 does); here it counts as "off".
    """
    if opts.channels_last:
        net.to(memory_format=torch.channels_last)
    if opts.compile in ("off", "auto"):
        return net
    if opts.compile not in COMPILE_MODES:
        raise ValueError(f"compile={opts.compile!r}: choose one of {', '.join(COMPILE_MODES)}")
    cache = net.__dict__.setdefault("_segdiff_compiled", _CompiledCache())  # a plain attribute, not a submodule
    if opts.compile not in cache:
        compiling.use_cache_dir(opts.compile_cache)
        mode = None if opts.compile == "default" else opts.compile
        cache[opts.compile] = torch.compile(net, mode=mode, dynamic=False)
    return cache[opts.compile]


def generation_chunks(B: int, G: int, per_batch: int):
    """Network batches of images x generations: generations of one image split when G > per_batch,
    otherwise as many whole images as fit."""
    if G >= per_batch:
        for b in range(B):
            for g0 in range(0, G, per_batch):
                yield b, b + 1, g0, min(G, g0 + per_batch)
    else:
        step = per_batch // G
        for b0 in range(0, B, step):
            yield b0, min(B, b0 + step), 0, G


def summarise(x0: torch.Tensor) -> dict[str, torch.Tensor]:
    """[..., G, H, W] generations in x0 space -> probability, uncertainty, mask [..., H, W]."""
    p = ((x0.float() + 1) / 2).clamp(0, 1)
    prob = p.mean(dim=-3)
    return {"prob": prob, "uncertainty": p.std(dim=-3, unbiased=False), "mask": prob >= 0.5, "samples": p}


def class_distribution(x0: torch.Tensor) -> torch.Tensor:
    """[..., K, H, W] one-hot channels in x0 space -> per-pixel class distribution (sums to 1 over K):
    clamp((x0 + 1) / 2, 0, 1) renormalised, uniform where every channel is at -1 or below."""
    q = ((x0.float() + 1) / 2).clamp(0, 1)
    s = q.sum(dim=-3, keepdim=True)
    K = q.shape[-3]
    return torch.where(s > 0, q / s.clamp(min=1e-12), torch.full_like(q, 1.0 / K))


def summarise_classes(x0: torch.Tensor) -> dict[str, torch.Tensor]:
    """[..., G, K, H, W] generations of a K-class model -> prob [..., K, H, W] (mean over generations of
    each generation's class distribution), label [..., H, W] (argmax), entropy [..., H, W] (of the mean
    distribution, nats), disagreement [..., H, W] (fraction of generations whose argmax is not the label),
    samples [..., G, K, H, W] (each generation's distribution)."""
    q = class_distribution(x0)
    prob = q.mean(dim=-4)
    label = prob.argmax(dim=-3)
    entropy = -(prob * prob.clamp(min=1e-12).log()).sum(dim=-3)
    disagreement = (q.argmax(dim=-3) != label.unsqueeze(-3)).float().mean(dim=-3)
    return {"prob": prob, "label": label, "entropy": entropy, "disagreement": disagreement, "samples": q}
