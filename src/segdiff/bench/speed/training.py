"""The training benchmark: samples per second of one training step, ours against a plain eager fp32 step
(and under torch.compile)."""

from __future__ import annotations

import torch

from ...config import RunConfig
from .measure import PeakMemory, seeded_model, timed
from .protocol import Protocol


def bench_training(cfg: RunConfig, device: torch.device, proto: Protocol, mode: str) -> dict:
    """Samples per second of one training step. mode "ours": train/loop.py's step (LossModule, bf16
    autocast on CUDA, gradient clipping, EMA update) with AdamW(fused=True) on CUDA; "plain": the same
    step in eager fp32 with PyTorch's default AdamW; "compiled": "ours" with the loss module under
    torch.compile (TrainConfig.compile = "default"), its first step (the compile) timed on its own.
    On a CPU "ours" and "plain" are the same fp32 step."""
    from ...train.ema import EMA
    from ...train.step import LossModule, train_step

    model = seeded_model(cfg, device)
    net = model.net.train()
    tc = cfg.train
    cuda = device.type == "cuda"
    ours = mode in ("ours", "compiled")
    opt_kw = {"fused": True} if (ours and cuda) else {}
    opt = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, **opt_kw)
    ema = EMA(net, tc.ema_rate)
    loss_mod = LossModule(net, model.schedule, model.config)
    if mode == "compiled":
        loss_mod = torch.compile(loss_mod)
    n, s = tc.batch_size, cfg.data.size
    g = torch.Generator().manual_seed(0)
    image = torch.rand(n, cfg.model.image_channels, s, s, generator=g).to(device)
    x0 = (torch.rand(n, 1, s, s, generator=g) > 0.5).float().mul(2).sub(1).to(device)
    t = torch.randint(len(model.schedule), (n,), generator=g).to(device)
    eps = torch.randn(n, 1, s, s, generator=g).to(device)
    amp = torch.bfloat16 if (ours and cuda) else None
    step = 0  # the optimizer step's number

    def optimizer_step():
        nonlocal step
        train_step(loss_mod, net, opt, ema, (image, x0, t, eps), step, tc.grad_clip, amp)
        step += 1

    def timed_steps():
        for _ in range(proto.train_steps):
            optimizer_step()

    with PeakMemory(device) as mem:
        first_s = timed(optimizer_step, device, repeats=1, warmup=0)[0]  # includes the compile in mode "compiled"
        for _ in range(proto.train_warmup - 1):
            optimizer_step()
        seconds = timed(timed_steps, device, repeats=1, warmup=0)[0]
    result = {
        "mode": mode,
        "batch_size": n,
        "optimizer_steps": proto.train_steps,
        "seconds": seconds,
        "samples_per_s": n * proto.train_steps / seconds,
        "amp": "bf16" if amp is not None else "fp32",
        "optimizer": "AdamW(fused=True)" if opt_kw else "AdamW (PyTorch default implementation)",
        "peak_memory_bytes": mem.bytes,
        "peak_memory_kind": mem.kind,
        "first_step_seconds": first_s,
    }
    if mode == "compiled":
        result["compile_seconds"] = first_s - seconds / proto.train_steps  # first step minus a compiled step
    if cuda:
        torch.cuda.empty_cache()
    return result
