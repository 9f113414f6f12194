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
from .schedule import learning_rate, probe_end, should_compile, steps_for_budget


class LossModule(nn.Module):
    """Wraps the network so that DistributedDataParallel sees G, F, E and D in one forward."""

    def __init__(self, model: SegDiff):
        super().__init__()
        self.net = model.net
        self._model = [model]  # not a submodule

    def forward(self, image, x0, t, eps):
        model = self._model[0]
        cond = self.net.encode_image(model.normalize(image))
        return training_loss(self.net, x0, cond, t, eps, model.schedule, model.config.model.prediction)


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


_now = time.time  # the loop's clock (a test replaces it to make the budget's throughput probe deterministic)

_UNBOUNDED = 10**12  # the data loader's length before a budget run has fixed max_steps


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
    kept = None  # a budget run's fixed max_steps, kept over the one requested on resume
    if resume:
        if not (out / "config.json").is_file():
            raise UserError(f"--resume: {out} holds no run to resume (no config.json); leave out --resume to start one")
        saved = RunConfig.load(out / "config.json")
        if config is not None and saved.train.budget_fixed_at is not None:
            # a budget run keeps the max_steps its budget was turned into (its lr schedule depends on it)
            st, rt = saved.train, config.train
            if rt.max_steps != st.max_steps and rt.budget_fixed_at is None:
                kept = f"max_steps {st.max_steps} (fixed by the budget at step {st.budget_fixed_at}), not "
                kept += str(rt.max_steps)
            config = replace(config, train=replace(rt, max_steps=st.max_steps, budget_fixed_at=st.budget_fixed_at))
        config, changes = resume_config(saved, config)
    elif config is None:
        raise UserError("a new run needs a config (a preset or a config file)")
    elif (out / "train_state.pt").exists() or (out / "config.json").exists():
        raise UserError(f"{out}: already holds a run; pass --resume to continue it or choose another --out")
    config.validate()
    config = replace(config, train=replace(config.train))  # the budget fixes max_steps in this run's own copy
    info = init_distributed("cpu" if device == "cpu" else None)
    device = resolve_device(device, info)  # cuda:LOCAL_RANK under torchrun
    barrier(info)  # every rank has checked --out before rank 0 writes to it
    tc = config.train
    if tc.batch_size % info.world:
        raise UserError(f"--batch-size {tc.batch_size} is not divisible by the {info.world} processes")

    splits = make_splits(data, config.data.val_fraction, tc.seed)
    batches = TrainBatches(splits.train, config.data, config.diffusion.steps, tc.seed, tc.t_sampling)
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
    if resume and kept:
        log.text(f"resumed with {kept}")
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
    budget = tc.budget_minutes is not None and tc.budget_fixed_at is None  # max_steps still to be fixed
    last = _UNBOUNDED if budget else tc.max_steps
    loader = torch.utils.data.DataLoader(
        StepDataset(batches, step, last, tc.batch_size, start, stop),
        batch_size=None,
        shuffle=False,
        num_workers=tc.num_workers,
        persistent_workers=False,
        pin_memory=model.device.type == "cuda",
        generator=torch.Generator(),  # the iterator draws a base seed: not from the global RNG (dropout)
    )
    amp = torch.bfloat16 if model.device.type == "cuda" else None
    compile_mode = should_compile(tc.compile, model.device.type, tc.budget_minutes)
    step_module = ddp
    if compile_mode != "off":
        step_module = torch.compile(ddp, mode=None if compile_mode == "default" else compile_mode)
        log.text(f"training step compiled with torch.compile (mode {compile_mode}; config compile={tc.compile})")

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
    left = 0 if (tc.budget_minutes is not None and tc.budget_fixed_at is None) else tc.max_steps - step  # unknown yet
    validations = 2 * (left // tc.val_every + 1 if tc.val_every else 1)
    val_opts = validation_options(model, config, shapes, validations) if val_pairs else None
    val_net = None
    if val_opts is not None and val_opts.compile != "off":
        val_net = copy.deepcopy(model.net).eval()
        log.text(f"validation compiles ({val_opts.compile}): {model.compile_decision.reason}")

    def run_validation() -> None:
        nonlocal best
        if not val_pairs:
            return
        t_val = _now()
        nets = (("raw", model.net), ("ema", ema.model)) if tc.ema_rate else (("raw", model.net),)
        scores = {name: validate(model, net, val_pairs, config, info, val_opts, val_net) for name, net in nets}
        scores.setdefault("ema", scores["raw"])  # ema_rate 0: the EMA weights are the raw weights
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
            f"(best {best['iou']:.4f} {best.get('weights')} @ {best.get('step')}; {_now() - t_val:.1f} s)"
        )

    def sync() -> None:
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)

    first_step = step
    pend = probe_end(tc)
    probe_from = max(tc.budget_warmup_steps, first_step + 1)  # a resumed run measures again after one step
    if probe_from >= pend:
        probe_from = first_step
    probe_t0 = None

    def fix_budget() -> None:
        """Turn the budget into max_steps once (rank 0 measures; every rank takes its number)."""
        sync()
        now = _now()
        done = step - probe_from
        probe_s = (now - probe_t0) if (probe_t0 is not None and done > 0) else (now - t0)
        probe_n = done if (probe_t0 is not None and done > 0) else max(step, 1)
        n = steps_for_budget(tc.budget_minutes * 60, now - t0, probe_s, probe_n, step)
        n = int(all_reduce_sum([float(n) if info.main else 0.0], model.device, info)[0])
        tc.max_steps, tc.budget_fixed_at = n, step
        if info.main:
            config.save(out / "config.json")
        log.record(
            kind="budget",
            step=step,
            max_steps=n,
            budget_s=tc.budget_minutes * 60,
            elapsed_s=now - t0,
            seconds_per_step=probe_s / probe_n,
            probe_steps=probe_n,
        )
        log.text(
            f"budget {tc.budget_minutes:g} min: {probe_s / probe_n:.4f} s/step measured over steps "
            f"{step - probe_n}..{step} after {now - t0:.1f} s -> max_steps fixed at {n} (config.json)"
        )
        bar.total = n
        bar.refresh()

    t0, losses, last_log = _now() - elapsed, [], _now()
    waited = 0.0  # seconds spent waiting for the data loader since the last log line
    bar = tqdm(total=tc.max_steps, initial=step, disable=not (progress and info.main), desc="train", unit="step")
    stopped_by = "max_steps"
    try:
        model.net.train()
        batches_it = iter(loader)
        while step < tc.max_steps:
            if budget and tc.budget_fixed_at is None:
                if step == probe_from:
                    sync()
                    probe_t0 = _now()
                # at the probe's end; earlier only if the budget is already spent (a very slow or busy machine)
                if step >= pend or (step > first_step and _now() - t0 >= tc.budget_minutes * 60):
                    fix_budget()
                    if step >= tc.max_steps:
                        break
            tw = _now()
            try:
                image, x0, t, eps = next(batches_it)
            except StopIteration:
                break
            waited += _now() - tw
            late = tc.max_minutes is not None and (_now() - t0) / 60 >= tc.max_minutes
            if tc.max_minutes is not None and any_rank(late, model.device, info):  # ranks stop together
                stopped_by = "max_minutes"
                break
            dev = model.device
            image, x0, t, eps = (v.to(dev, non_blocking=True) for v in (image, x0, t, eps))
            if info.enabled:  # each rank its own dropout masks, keyed so that a resumed run continues exactly
                torch.manual_seed(rng.key(tc.seed, "dropout", info.rank, step))
            for group in opt.param_groups:
                group["lr"] = learning_rate(tc, step)
            if step == first_step and compile_mode != "off":
                tc_start = _now()
            loss = train_step(step_module, model.net, opt, ema, (image, x0, t, eps), step, tc.grad_clip, amp)
            if step == first_step and compile_mode != "off":
                sync()
                log.text(f"first step (torch.compile {compile_mode} included): {_now() - tc_start:.1f} s")
            step += 1
            losses.append(loss.detach())
            bar.update(1)
            if step % tc.log_every == 0 or step == tc.max_steps:
                mean_loss = all_reduce_sum([float(torch.stack(losses).mean())], model.device, info)[0] / info.world
                if not math.isfinite(mean_loss):
                    raise UserError(f"loss became {mean_loss} at step {step}; lower --lr or check the data")
                now = _now()
                log.record(
                    kind="train",
                    step=step,
                    loss=mean_loss,
                    lr=learning_rate(tc, step - 1),
                    steps_per_s=len(losses) / max(now - last_log, 1e-9),
                    elapsed_s=now - t0,
                    # host time blocked on the data loader / wall time of the interval (1 = starved)
                    data_wait_frac=waited / max(now - last_log, 1e-9),
                )
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                losses, last_log, waited = [], now, 0.0
            elapsed = _now() - t0
            if tc.val_every and step % tc.val_every == 0:
                model.net.eval()
                run_validation()
                model.net.train()
            if tc.save_every and step % tc.save_every == 0:
                save()
    except KeyboardInterrupt:
        elapsed = _now() - t0
        save()
        log.text(f"interrupted at step {step}; saved")
        raise
    finally:
        bar.close()
    elapsed = _now() - t0
    model.net.eval()
    if val_pairs and not (tc.val_every and step % tc.val_every == 0 and stopped_by == "max_steps"):
        run_validation()
    save()
    if stopped_by == "max_steps" and tc.budget_fixed_at is not None:
        stopped_by = "budget"
    log.text(f"finished at step {step} ({stopped_by}), {elapsed:.1f} s; best val {best}")
    shutdown(info)  # destroys the process group if init_distributed created it
    return {
        "step": step,
        "elapsed_s": elapsed,
        "best": best,
        "stopped_by": stopped_by,
        "run": str(out),
        "max_steps": tc.max_steps,
        "compile": compile_mode,
    }
