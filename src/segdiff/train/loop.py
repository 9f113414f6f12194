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

from .. import faults, rng
from ..api import SegDiff
from ..atomic import atomic_write_text
from ..config import RunConfig, resume_config
from ..data.classes import ClassSet, resolve_classes
from ..data.dataset import (
    StepDataset,
    TrainBatches,
    channel_stats,
    image_channels,
    load_pair,
    make_splits,
    write_split,
)
from ..diffusion import training_loss
from ..errors import CheckpointError, UserError
from ..lock import lock_run
from ..memory import check_training, is_out_of_memory
from ..metrics.overlap import confusion, f1_from_confusion, iou_from_confusion
from .checkpoint import (
    find_checkpoint,
    load_into,
    read_weights,
    state_dict_cpu,
    tidy_checkpoint,
    write_checkpoint,
    write_files,
)
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

    def forward(self, image, x0, t, eps, valid=None):
        model = self._model[0]
        cond = self.net.encode_image(model.normalize(image))
        return training_loss(self.net, x0, cond, t, eps, model.schedule, model.config.model.prediction, valid)


def _grad_norm(net: nn.Module, grad_clip: float) -> torch.Tensor:
    """The gradients' total norm (non-finite iff a gradient is), clipping them to grad_clip when set."""
    if grad_clip:
        return torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def train_step(
    loss_fn, net: nn.Module, opt, ema: EMA, batch, step: int, grad_clip: float, amp, skip_nonfinite: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of Algorithm 2: loss (under CUDA autocast to `amp` when given), backward, gradient
    clipping, optimizer step, EMA update. Also what `segdiff benchmark` times as our training step.

    Returns the loss and a flag (a 0-d bool tensor, on the loss's device, not synchronised) that is
    False when the loss or the gradients' norm is not finite. With skip_nonfinite such a step leaves the
    weights, optimizer and EMA as they were (this reads the flag on the host: one sync per step; under
    torchrun the ranks agree through an all-reduce)."""
    with torch.autocast("cuda", dtype=amp) if amp is not None else contextlib.nullcontext():
        loss = loss_fn(*batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    finite = torch.isfinite(loss.detach()) & torch.isfinite(_grad_norm(net, grad_clip))
    if skip_nonfinite:
        ok = finite.to(torch.int32)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
        if not bool(ok):
            opt.zero_grad(set_to_none=True)
            return loss, ok.bool()
    opt.step()
    ema.update(net, step)
    return loss, finite


_now = time.time  # the loop's clock (a test replaces it to make the budget's throughput probe deterministic)

_UNBOUNDED = 10**12  # the data loader's length before a budget run has fixed max_steps


def with_data_shape(config: RunConfig, data: Path, train_samples) -> RunConfig:
    """A new run's config with what the data decides (the caller's config is unchanged): the image
    channels (model.image_channels) and, for multi-class masks, the classes (data.classes, ignore label)
    and model.mask_channels = K (docs/data.md). Classes already in the config (set in Python) are kept."""
    data_cfg = config.data
    if data_cfg.classes is None:
        found = resolve_classes(data)
        if found is not None:
            data_cfg = replace(data_cfg, **found.to_config())
    classes = ClassSet.from_config(data_cfg)
    model_cfg = replace(
        config.model,
        image_channels=image_channels(train_samples),
        mask_channels=1 if classes is None else classes.K,
    )
    return replace(config, model=model_cfg, data=data_cfg)


def _class_iou(pred: torch.Tensor, gt: torch.Tensor, K: int) -> tuple[float, float]:
    """Mean over foreground classes (1..K-1) present in prediction or truth of IoU and Dice; ignored
    pixels (gt >= K) left out; 1, 1 when no foreground class is present in either."""
    keep = gt < K
    p, g = pred[keep].long(), gt[keep].long()
    ious, dices = [], []
    for k in range(1, K):
        pk, gk = p == k, g == k
        tp, fp, fn = int((pk & gk).sum()), int((pk & ~gk).sum()), int((~pk & gk).sum())
        if tp + fp + fn:
            ious.append(tp / (tp + fp + fn))
            dices.append(2 * tp / (2 * tp + fp + fn))
    return (sum(ious) / len(ious), sum(dices) / len(dices)) if ious else (1.0, 1.0)


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
            pred = model.predict(image, keys=[("val", i)], opts=opts).mask[0]
            if cfg.model.mask_channels > 1:  # multi-class: mean over foreground classes
                iou, f1 = _class_iou(pred, mask[0], cfg.model.mask_channels)
            else:
                c = confusion(pred.numpy(), mask[0].numpy() > 0.5)
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

    Rank 0 holds an OS lock on RUN/.lock for the run's life: a second `train` on the same folder is
    refused with this process's id (the lock goes with the process, so a killed run leaves none).
    """
    data, out = Path(data), Path(out)
    info = init_distributed("cpu" if device == "cpu" else None)
    device = resolve_device(device, info)  # cuda:LOCAL_RANK under torchrun
    lock, refused = None, None
    if info.main:
        try:
            lock = lock_run(out)
        except UserError as exc:
            refused = exc
    try:
        if any_rank(refused is not None, torch.device(device or "cpu"), info):  # every rank stops
            raise refused or UserError(f"{out}: another process is training this run folder (see rank 0)")
        return _train(data, out, config, resume, device, progress, info)
    finally:
        if lock is not None:
            lock.release()


def _save_checkpoint(files: dict, after: int, kept: int | None) -> None:
    try:
        write_checkpoint(files)
    except UserError as exc:  # a failed write (disk full): the previous checkpoint is untouched
        prev = f"the last complete checkpoint (step {kept}) is kept" if kept is not None else "no checkpoint was saved"
        raise UserError(f"{exc}; training stopped at step {after} and {prev}: fix this, then --resume") from exc


class NonFiniteError(UserError):
    """The loss or a gradient became NaN or infinite."""


def _train(data: Path, out: Path, config: RunConfig, resume: bool, device, progress: bool, info: DistInfo) -> dict:
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
    barrier(info)  # every rank has checked --out before rank 0 writes to it
    tc = config.train
    if tc.batch_size % info.world:
        raise UserError(f"--batch-size {tc.batch_size} is not divisible by the {info.world} processes")

    splits = make_splits(data, config.data.val_fraction, tc.seed)
    if not resume:
        config = with_data_shape(config, data, splits.train)
    batches = TrainBatches(
        splits.train,
        config.data,
        config.diffusion.steps,
        tc.seed,
        tc.t_sampling,
        channels=config.model.image_channels,
    )
    if config.data.mean is None:
        mean, std = channel_stats(batches.float_images())
        config = replace(config, data=replace(config.data, mean=mean, std=std))  # the caller's config is unchanged
    classes = ClassSet.from_config(config.data)
    channels = config.model.image_channels
    val_pairs = [load_pair(s, classes, channels) for s in splits.val[: tc.val_max_images or None]]

    torch.manual_seed(tc.seed)  # initial weights and dropout; a resumed run restores its RNG state below
    model = SegDiff(config, device)
    ema = EMA(model.net, tc.ema_rate)
    fused = True if model.device.type == "cuda" else None  # one kernel per step on GPU; CPU: the default
    opt = torch.optim.AdamW(model.net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=fused)
    step, elapsed, best, skipped = 0, 0.0, {"iou": -1.0}, 0
    pending: list[torch.Tensor] = []  # losses since the last log line, kept across a resume
    ckpt_paths = None
    if resume:
        # the newest complete checkpoint: a save that was interrupted leaves the previous one complete
        step, ckpt_paths, state = find_checkpoint(out)
    if resume and ckpt_paths:
        raw, _ = read_weights(ckpt_paths["model.safetensors"])
        ema_w, _ = read_weights(ckpt_paths["ema.safetensors"])
        load_into(model.net, raw, ckpt_paths["model.safetensors"])
        load_into(ema.model, ema_w, ckpt_paths["ema.safetensors"])
        try:
            opt.load_state_dict(state["optimizer"])
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{ckpt_paths['train_state.pt']}: optimizer state does not fit ({exc})") from None
        elapsed, best = float(state["elapsed"]), dict(state["best"])
        skipped = int(state.get("skipped", 0))
        pending = list(state.get("pending_losses", torch.zeros(0)).to(model.device).unbind())
        torch.set_rng_state(state["rng"]["torch"])
        if torch.cuda.is_available() and state["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    elif not resume and info.main:
        out.mkdir(parents=True, exist_ok=True)
        for tmp in out.glob(".*.partial-*"):  # left by a killed start; this process holds the run's lock
            tmp.unlink(missing_ok=True)
        config.save(out / "config.json")
        write_split(out / "split.json", splits)
    barrier(info)
    if ckpt_paths is not None and info.main:  # every rank has read the checkpoint
        tidy_checkpoint(out, ckpt_paths)
    saved_step = step if ckpt_paths else None

    log = RunLog(out, info.main, step if resume else None)
    if resume and not ckpt_paths:
        log.text("no complete checkpoint yet (the first save was interrupted): starting again from step 0")
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

    check_training(config, tc.batch_size // info.world, model.device)  # before any work: segdiff/memory.py
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
    # a non-finite loss or gradient is detected at every step: read at once where that is free (CPU) or
    # needed (skip_nonfinite), else kept on the device and read before anything is logged, validated or saved
    read_now = tc.skip_nonfinite or model.device.type != "cuda"
    first_bad = torch.full((), -1, dtype=torch.long, device=model.device)

    def stop_if_nonfinite(bad: bool | None = None) -> None:
        if bad is None:
            bad = int(first_bad) >= 0
        if any_rank(bad, model.device, info):
            at = int(first_bad) if int(first_bad) >= 0 else step
            kept = f"the last checkpoint (step {saved_step}) is kept" if saved_step is not None else "nothing was saved"
            msg = (
                f"step {at + 1}: the loss or a gradient is not finite (NaN or Inf); training stopped and {kept} "
                f"in {out}; resume with a lower --lr, check the data, or skip such steps with "
                "--set train.skip_nonfinite=true"
            )
            log.text(msg)
            raise NonFiniteError(msg)

    def save() -> None:
        nonlocal saved_step
        stop_if_nonfinite()  # never save weights a non-finite step has touched
        if info.main:
            meta = {"step": step, "preset": config.preset}
            rng_state = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng_state["cuda"] = torch.cuda.get_rng_state_all()
            _save_checkpoint(
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
                            "skipped": skipped,
                            "pending_losses": torch.stack(losses).cpu() if losses else torch.zeros(0),
                        },
                        {},
                    ),
                },
                after=step,
                kept=saved_step,
            )
            plot_curves(log.rows(), out / "curves.png")
        saved_step = step
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
        stop_if_nonfinite()
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

    t0, losses, last_log, n_steps = _now() - elapsed, pending, _now(), 0
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
                batch = next(batches_it)  # image, x0, t, eps (and valid for multi-class data)
            except StopIteration:
                break
            waited += _now() - tw
            late = tc.max_minutes is not None and (_now() - t0) / 60 >= tc.max_minutes
            if tc.max_minutes is not None and any_rank(late, model.device, info):  # ranks stop together
                stopped_by = "max_minutes"
                break
            dev = model.device
            batch = tuple(v.to(dev, non_blocking=True) for v in batch)
            image = batch[0]
            if info.enabled:  # each rank its own dropout masks, keyed so that a resumed run continues exactly
                torch.manual_seed(rng.key(tc.seed, "dropout", info.rank, step))
            for group in opt.param_groups:
                group["lr"] = learning_rate(tc, step)
            if step == first_step and compile_mode != "off":
                tc_start = _now()
            try:
                loss, finite = train_step(
                    step_module, model.net, opt, ema, batch, step, tc.grad_clip, amp, tc.skip_nonfinite
                )
            except RuntimeError as exc:
                if not is_out_of_memory(exc):
                    raise
                raise UserError(
                    f"step {step + 1}: out of memory for a batch of {per_rank} x {tuple(image.shape[-2:])} on "
                    f"{model.device}; use a smaller --batch-size (or more processes with torchrun); the last "
                    f"checkpoint (step {saved_step}) is kept"
                ) from None
            if step == first_step and compile_mode != "off":
                sync()
                log.text(f"first step (torch.compile {compile_mode} included): {_now() - tc_start:.1f} s")
            faults.point("train.step")
            if tc.skip_nonfinite:
                if not bool(finite):
                    skipped += 1
                    log.text(f"step {step + 1}: non-finite loss or gradient; step skipped ({skipped} so far)")
            elif read_now:
                if not bool(finite):
                    first_bad.fill_(step)
                stop_if_nonfinite(not bool(finite))
            else:
                first_bad = torch.where((first_bad < 0) & ~finite, step, first_bad)
            step += 1
            if not tc.skip_nonfinite or bool(finite):  # (no host sync unless skipping)
                losses.append(loss.detach())
            n_steps += 1
            bar.update(1)
            if step % tc.log_every == 0 or step == tc.max_steps:
                stop_if_nonfinite()
                local = float(torch.stack(losses).mean()) if losses else float("nan")
                mean_loss = all_reduce_sum([local], model.device, info)[0] / info.world
                if not math.isfinite(mean_loss) and not tc.skip_nonfinite:
                    raise NonFiniteError(f"loss became {mean_loss} at step {step}; lower --lr or check the data")
                now = _now()
                log.record(
                    kind="train",
                    step=step,
                    loss=mean_loss if math.isfinite(mean_loss) else None,
                    lr=learning_rate(tc, step - 1),
                    steps_per_s=n_steps / max(now - last_log, 1e-9),
                    elapsed_s=now - t0,
                    # host time blocked on the data loader / wall time of the interval (1 = starved)
                    data_wait_frac=waited / max(now - last_log, 1e-9),
                    **({"skipped": skipped} if tc.skip_nonfinite else {}),
                )
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                losses, last_log, waited, n_steps = [], now, 0.0, 0
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
    log.text(
        f"finished at step {step} ({stopped_by}), {elapsed:.1f} s; best val {best}"
        + (f"; {skipped} non-finite step(s) skipped" if skipped else "")
    )
    shutdown(info)  # destroys the process group if init_distributed created it
    summary = {
        "step": step,
        "elapsed_s": elapsed,
        "best": best,
        "stopped_by": stopped_by,
        "run": str(out),
        "max_steps": tc.max_steps,
        "compile": compile_mode,
    }
    return summary | ({"skipped_nonfinite": skipped} if skipped else {})
