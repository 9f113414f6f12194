"""The training loop (Algorithm 2), read top to bottom.

    segdiff train --data ROOT --out RUN [--preset NAME] [--max-steps N] [--batch-size B] [--resume]

Exact resume: the data, augmentation, timestep and noise of every sample are keyed by (seed, step,
sample index); the optimizer, EMA, step and the global RNG state (dropout) are in the checkpoint. On a
CPU with fixed threads and no worker processes, an interrupted and resumed run gives bitwise the same
losses and weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from .. import rng
from ..api import SegDiff
from ..atomic import atomic_write_text
from ..config import RunConfig, resume_config
from ..data.dataset import StepDataset, TrainBatches, channel_stats, load_pair, make_splits, write_split
from ..diffusion import training_loss
from ..errors import CheckpointError, UserError
from ..metrics.overlap import confusion, f1_from_confusion, iou_from_confusion
from .checkpoint import load_into, read_train_state, read_weights, state_dict_cpu, write_files
from .distributed import (
    DistInfo,
    all_reduce_sum,
    any_rank,
    barrier,
    init_distributed,
    resolve_device,
    shutdown,
)
from .ema import EMA
from .logging import RunLog, plot_curves


class LossModule(nn.Module):
    """Wraps the network so that DistributedDataParallel sees G, F, E and D in one forward."""

    def __init__(self, model: SegDiff):
        super().__init__()
        self.net = model.net
        self._model = [model]  # not a submodule

    def forward(self, image, x0, t, eps):
        model = self._model[0]
        cond = self.net.encode_image(model.normalize(image))
        return training_loss(self.net, x0, cond, t, eps, model.schedule)


def train_step(loss_fn, net: nn.Module, opt, ema: EMA, batch, step: int, grad_clip: float, amp) -> torch.Tensor:
    """One step of Algorithm 2: loss (under CUDA autocast to `amp` when given), backward, gradient
    clipping, optimizer step, EMA update. Also what `segdiff benchmark` times as our training step."""
    with torch.autocast("cuda", dtype=amp) if amp is not None else contextlib.nullcontext():
        loss = loss_fn(*batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    opt.step()
    ema.update(net, step)
    return loss


def _lr(cfg, step: int) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr


def validation_options(model: SegDiff, cfg: RunConfig, shapes: list[tuple[int, int]], validations: int):
    """The prediction protocol of validation (the run's `predict` config with the val generations and
    steps), with compile="auto" resolved once for `validations` runs over images of `shapes` (H, W)."""
    opts = model.sampling_options(
        generations=cfg.train.val_generations, sampling_steps=cfg.train.val_steps, seed=cfg.train.seed
    )
    return model.resolve_compile(opts, shapes, repeats=validations)


@torch.no_grad()
def validate(
    model: SegDiff,
    net: nn.Module,
    val_pairs,
    cfg: RunConfig,
    info: DistInfo,
    opts=None,
    shared: nn.Module | None = None,
) -> dict[str, float]:
    """Foreground IoU and F1 on this rank's share of the val images, summed over ranks.

    opts: the protocol (default `validation_options` for one run). shared: a network of the same
    architecture that `net`'s weights are copied into and that predicts instead, so that a compiled
    module (cached on `shared`) serves raw and EMA weights alike without compiling again.
    """
    if shared is not None:
        shared.load_state_dict(net.state_dict())
        net = shared.eval()
    saved = model.net
    model.net = net
    try:
        opts = opts or validation_options(model, cfg, [tuple(im.shape[-2:]) for im, _ in val_pairs], 1)
        sums = [0.0, 0.0, 0.0]
        for i in range(info.rank, len(val_pairs), info.world):
            image, mask = val_pairs[i]
            pred = model.predict(image, keys=[("val", i)], opts=opts).mask[0].numpy()
            c = confusion(pred, mask[0].numpy() > 0.5)
            iou, f1 = iou_from_confusion(c), f1_from_confusion(c)
            sums = [sums[0] + iou, sums[1] + f1, sums[2] + 1]
        iou, f1, n = all_reduce_sum(sums, model.device, info)
    finally:
        model.net = saved
    return {"iou": iou / max(n, 1), "f1": f1 / max(n, 1), "n": int(n)}


def train(
    data: str | Path,
    out: str | Path,
    config: RunConfig | None = None,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Train `config` on the data folder `data`, writing the run folder `out`. Returns a summary dict.

    resume: continue the run in `out` with its saved config. A `config` given then may differ from the
    saved one only in length, cadence and time budget (config.RESUMABLE); other changes are refused.
    The changes are applied, written to config.json and recorded in log.txt.
    """
    data, out = Path(data), Path(out)
    changes: dict[str, tuple] = {}
    if resume:
        if not (out / "config.json").is_file():
            raise UserError(f"--resume: {out} holds no run to resume (no config.json); leave out --resume to start one")
        config, changes = resume_config(RunConfig.load(out / "config.json"), config)
    elif config is None:
        raise UserError("a new run needs a config (a preset or a config file)")
    elif (out / "train_state.pt").exists() or (out / "config.json").exists():
        raise UserError(f"{out}: already holds a run; pass --resume to continue it or choose another --out")
    config.validate()
    info = init_distributed("cpu" if device == "cpu" else None)
    device = resolve_device(device, info)  # cuda:LOCAL_RANK under torchrun
    barrier(info)  # every rank has checked --out before rank 0 writes to it
    tc = config.train
    if tc.batch_size % info.world:
        raise UserError(f"--batch-size {tc.batch_size} is not divisible by the {info.world} processes")

    splits = make_splits(data, config.data.val_fraction, tc.seed)
    batches = TrainBatches(splits.train, config.data, config.diffusion.steps, tc.seed)
    if config.data.mean is None:
        mean, std = channel_stats(batches.float_images())
        config = replace(config, data=replace(config.data, mean=mean, std=std))  # the caller's config is unchanged
    val_pairs = [load_pair(s) for s in splits.val[: tc.val_max_images or None]]

    torch.manual_seed(tc.seed)  # initial weights and dropout; a resumed run restores its RNG state below
    model = SegDiff(config, device)
    ema = EMA(model.net, tc.ema_rate)
    fused = True if model.device.type == "cuda" else None  # one kernel per step on GPU; CPU: the default
    opt = torch.optim.AdamW(model.net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=fused)
    step, elapsed, best = 0, 0.0, {"iou": -1.0}
    if resume:
        state = read_train_state(out / "train_state.pt")
        raw, raw_meta = read_weights(out / "model.safetensors")
        ema_w, ema_meta = read_weights(out / "ema.safetensors")
        if not (str(state["step"]) == raw_meta.get("step") == ema_meta.get("step")):
            raise CheckpointError(
                f"{out}: model.safetensors (step {raw_meta.get('step')}), ema.safetensors (step "
                f"{ema_meta.get('step')}) and train_state.pt (step {state['step']}) disagree; the last save "
                "was interrupted"
            )
        load_into(model.net, raw, out / "model.safetensors")
        load_into(ema.model, ema_w, out / "ema.safetensors")
        opt.load_state_dict(state["optimizer"])
        step, elapsed, best = int(state["step"]), float(state["elapsed"]), dict(state["best"])
        torch.set_rng_state(state["rng"]["torch"])
        if torch.cuda.is_available() and state["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    elif info.main:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / "config.json")
        write_split(out / "split.json", splits)
    barrier(info)

    log = RunLog(out, info.main, step if resume else None)
    log.text(
        f"{'resumed at step ' + str(step) if resume else 'started'}: data {data}, preset {config.preset}, "
        f"device {model.device}, {info.world} process(es), val: {splits.val_source} ({len(splits.val)})"
    )
    if changes:
        if info.main:
            config.save(out / "config.json")
        log.text("settings changed on resume: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changes.items()))

    loss_mod = LossModule(model)
    ddp = loss_mod
    if info.enabled:
        ids = [model.device.index] if model.device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel(loss_mod, device_ids=ids)
    per_rank = tc.batch_size // info.world
    start, stop = info.rank * per_rank, (info.rank + 1) * per_rank
    loader = torch.utils.data.DataLoader(
        StepDataset(batches, step, tc.max_steps, tc.batch_size, start, stop),
        batch_size=None,
        shuffle=False,
        num_workers=tc.num_workers,
        persistent_workers=False,
        pin_memory=model.device.type == "cuda",
        generator=torch.Generator(),  # the iterator draws a base seed: not from the global RNG (dropout)
    )
    amp = torch.bfloat16 if model.device.type == "cuda" else None

    def save() -> None:
        if info.main:
            meta = {"step": step, "preset": config.preset}
            rng_state = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng_state["cuda"] = torch.cuda.get_rng_state_all()
            write_files(
                {
                    out / "model.safetensors": (state_dict_cpu(model.net), meta),
                    out / "ema.safetensors": (state_dict_cpu(ema.model), meta),
                    out / "train_state.pt": (
                        {
                            "step": step,
                            "elapsed": elapsed,
                            "best": best,
                            "optimizer": opt.state_dict(),
                            "rng": rng_state,
                            "world": info.world,
                        },
                        {},
                    ),
                }
            )
            plot_curves(log.rows(), out / "curves.png")
        barrier(info)

    # validation's protocol, compile="auto" decided once for every validation ahead (raw and EMA each time);
    # when compiling, one shared network is compiled once and gets the raw or EMA weights copied in
    # (every rank decides for the largest share, so that ranks agree)
    shapes = [tuple(im.shape[-2:]) for im, _ in val_pairs[: -(-len(val_pairs) // info.world)]]
    validations = 2 * ((tc.max_steps - step) // tc.val_every + 1 if tc.val_every else 1)
    val_opts = validation_options(model, config, shapes, validations) if val_pairs else None
    val_net = None
    if val_opts is not None and val_opts.compile != "off":
        val_net = copy.deepcopy(model.net).eval()
        log.text(f"validation compiles ({val_opts.compile}): {model.compile_decision.reason}")

    def run_validation() -> None:
        nonlocal best
        if not val_pairs:
            return
        scores = {
            name: validate(model, net, val_pairs, config, info, val_opts, val_net)
            for name, net in (("raw", model.net), ("ema", ema.model))
        }
        row = {"kind": "val", "step": step, **{f"{k}_{m}": v[m] for k, v in scores.items() for m in ("iou", "f1")}}
        log.record(**row)
        which = max(scores, key=lambda k: scores[k]["iou"])
        if scores[which]["iou"] > best["iou"]:
            best = {"iou": scores[which]["iou"], "f1": scores[which]["f1"], "weights": which, "step": step}
            if info.main:
                net = model.net if which == "raw" else ema.model
                write_files({out / "best.safetensors": (state_dict_cpu(net), {"step": step, "weights": which})})
                atomic_write_text(out / "best.json", json.dumps(best, indent=2) + "\n")
        log.text(
            f"step {step}: val IoU raw {scores['raw']['iou']:.4f} ema {scores['ema']['iou']:.4f} "
            f"(best {best['iou']:.4f} {best.get('weights')} @ {best.get('step')})"
        )

    t0, losses, last_log = time.time() - elapsed, [], time.time()
    bar = tqdm(total=tc.max_steps, initial=step, disable=not (progress and info.main), desc="train", unit="step")
    stopped_by = "max_steps"
    try:
        model.net.train()
        for image, x0, t, eps in loader:
            late = tc.max_minutes is not None and (time.time() - t0) / 60 >= tc.max_minutes
            if tc.max_minutes is not None and any_rank(late, model.device, info):  # ranks stop together
                stopped_by = "max_minutes"
                break
            dev = model.device
            image, x0, t, eps = (v.to(dev, non_blocking=True) for v in (image, x0, t, eps))
            if info.enabled:  # each rank its own dropout masks, keyed so that a resumed run continues exactly
                torch.manual_seed(rng.key(tc.seed, "dropout", info.rank, step))
            for group in opt.param_groups:
                group["lr"] = _lr(tc, step)
            loss = train_step(ddp, model.net, opt, ema, (image, x0, t, eps), step, tc.grad_clip, amp)
            step += 1
            losses.append(loss.detach())
            bar.update(1)
            if step % tc.log_every == 0 or step == tc.max_steps:
                mean_loss = all_reduce_sum([float(torch.stack(losses).mean())], model.device, info)[0] / info.world
                if not math.isfinite(mean_loss):
                    raise UserError(f"loss became {mean_loss} at step {step}; lower --lr or check the data")
                now = time.time()
                log.record(
                    kind="train",
                    step=step,
                    loss=mean_loss,
                    lr=_lr(tc, step - 1),
                    steps_per_s=len(losses) / max(now - last_log, 1e-9),
                    elapsed_s=now - t0,
                )
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                losses, last_log = [], now
            elapsed = time.time() - t0
            if tc.val_every and step % tc.val_every == 0:
                model.net.eval()
                run_validation()
                model.net.train()
            if tc.save_every and step % tc.save_every == 0:
                save()
    except KeyboardInterrupt:
        elapsed = time.time() - t0
        save()
        log.text(f"interrupted at step {step}; saved")
        raise
    finally:
        bar.close()
    elapsed = time.time() - t0
    model.net.eval()
    if val_pairs and not (tc.val_every and step % tc.val_every == 0 and stopped_by == "max_steps"):
        run_validation()
    save()
    log.text(f"finished at step {step} ({stopped_by}), {elapsed:.1f} s; best val {best}")
    shutdown(info)  # destroys the process group if init_distributed created it
    return {"step": step, "elapsed_s": elapsed, "best": best, "stopped_by": stopped_by, "run": str(out)}
