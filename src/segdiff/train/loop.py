"""The training loop (Algorithm 2), read top to bottom.

    segdiff train --data ROOT --out RUN [--preset NAME] [--max-steps N] [--batch-size B] [--resume]

Exact resume: the data, augmentation, timestep and noise of every sample are keyed by (seed, step,
sample index); the optimizer, EMA, step and the global RNG state (dropout) are in the checkpoint. On a
CPU with fixed threads and no worker processes, an interrupted and resumed run gives bitwise the same
losses and weights as an uninterrupted one.
"""

from __future__ import annotations

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
from ..atomic import atomic_write_text
from ..checkpoint import (
    find_checkpoint,
    load_into,
    read_weights,
    state_dict_cpu,
    tidy_checkpoint,
    write_checkpoint,
    write_files,
)
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
from ..data.nnunet import is_nnunet
from ..data.volume import volume_training
from ..devices import default_device, synchronize
from ..diffusion import make_schedule
from ..errors import CheckpointError, UserError
from ..lock import lock_run
from ..memory import check_training, is_out_of_memory
from ..model import build_network
from ..predict.predictor import Predictor
from .distributed import (
    all_reduce_sum,
    any_rank,
    barrier,
    init_distributed,
    shutdown,
)
from .ema import EMA
from .logging import RunLog, plot_curves
from .schedule import learning_rate, probe_end, should_compile, steps_for_budget
from .step import LossModule, step_levers, train_step
from .validation import validate, validation_options

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
    device = default_device(device, info.local_rank if info.enabled else None)  # cuda:LOCAL_RANK under torchrun
    lock, refused = None, None
    if info.main:
        try:
            lock = lock_run(out)
        except UserError as exc:
            refused = exc
    try:
        if any_rank(refused is not None, device, info):  # every rank stops
            raise refused or UserError(f"{out}: another process is training this run folder (see rank 0)")
        return TrainingRun(data, out, config, resume, device, progress, info).run()
    finally:
        if lock is not None:
            lock.release()


class NonFiniteError(UserError):
    """The loss or a gradient became NaN or infinite."""


def run_config(out: Path, config: RunConfig | None, resume: bool) -> tuple[RunConfig, dict[str, tuple], str | None]:
    """The config a run trains with: a new run's `config`, or on resume the saved one with the changes
    `config` may make (config.resume_config). Returns it, the changes, and a note when a budget run's
    fixed max_steps was kept over the one requested."""
    changes: dict[str, tuple] = {}
    kept = None
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
    return config, changes, kept


class TrainingRun:
    """One run of `train`, read in order: __init__ sets it up (config, data, network, optimizer, resumed
    state, log, validation protocol); `run` is the loop of Algorithm 2; `save`, `score_weights`, `fix_budget`
    and `stop_if_nonfinite` are the things the loop does between steps."""

    def __init__(self, data: Path, out: Path, config, resume: bool, device: torch.device, progress: bool, info):
        self.data, self.out, self.info, self.progress = data, out, info, progress
        config, changes, kept = run_config(out, config, resume)
        barrier(info)  # every rank has checked --out before rank 0 writes to it
        tc = config.train
        if tc.batch_size % info.world:
            raise UserError(f"--batch-size {tc.batch_size} is not divisible by the {info.world} processes")

        if is_nnunet(data):  # an nnU-Net data set: the 2D model trains on its cases' slices (docs/data.md)
            splits, config, self.batches, self.val_pairs = volume_training(data, config, resume)
        else:
            splits = make_splits(data, config.data.val_fraction, tc.seed)
            if not resume:
                config = with_data_shape(config, data, splits.train)
            self.batches = TrainBatches(
                splits.train,
                config.data,
                config.diffusion.steps,
                tc.seed,
                tc.t_sampling,
                channels=config.model.image_channels,
                p_t_max=tc.p_t_max,
            )
            if config.data.mean is None:
                mean, std = channel_stats(self.batches.float_images())
                config = replace(config, data=replace(config.data, mean=mean, std=std))  # the caller's is unchanged
            classes = ClassSet.from_config(config.data)
            channels = config.model.image_channels
            self.val_pairs = [load_pair(s, classes, channels) for s in splits.val[: tc.val_max_images or None]]
        self.config, self.tc = config, tc

        torch.manual_seed(tc.seed)  # initial weights and dropout; a resumed run restores its RNG state below
        self.device = device
        self.net = build_network(config, device)
        self.schedule = make_schedule(config.diffusion.steps, config.diffusion.schedule)
        self.ema = EMA(self.net, tc.ema_rate)
        fused = True if device.type == "cuda" else None  # one kernel per step on GPU; CPU: the default
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=fused)
        self.step, self.elapsed, self.best, self.skipped = 0, 0.0, {"iou": -1.0}, 0
        self.losses: list[torch.Tensor] = []  # losses since the last log line, kept across a resume
        ckpt_paths = None
        if resume:
            # the newest complete checkpoint: a save that was interrupted leaves the previous one complete
            self.step, ckpt_paths, state = find_checkpoint(out)
        if resume and ckpt_paths:
            self.load_checkpoint(ckpt_paths, state)
        elif not resume and info.main:
            out.mkdir(parents=True, exist_ok=True)
            for tmp in out.glob(".*.partial-*"):  # left by a killed start; this process holds the run's lock
                tmp.unlink(missing_ok=True)
            config.save(out / "config.json")
            write_split(out / "split.json", splits)
        barrier(info)
        if ckpt_paths is not None and info.main:  # every rank has read the checkpoint
            tidy_checkpoint(out, ckpt_paths)
        self.saved_step = self.step if ckpt_paths else None

        self.log = log = RunLog(out, info.main, self.step if resume else None)
        if resume and not ckpt_paths:
            log.text("no complete checkpoint yet (the first save was interrupted): starting again from step 0")
        log.text(
            f"{'resumed at step ' + str(self.step) if resume else 'started'}: data {data}, preset {config.preset}, "
            f"device {device}, {info.world} process(es), val: {splits.val_source} ({len(splits.val)})"
        )
        if resume and kept:
            log.text(f"resumed with {kept}")
        if changes:
            if info.main:
                config.save(out / "config.json")
            log.text("settings changed on resume: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changes.items()))
        check_training(config, tc.batch_size // info.world, device)  # before any work: segdiff/memory.py
        self.setup_step()
        self.setup_validation()

    def load_checkpoint(self, paths: dict[str, Path], state: dict) -> None:
        """Weights, EMA, optimizer, clock, best score, pending losses and RNG state of a checkpoint."""
        raw, _ = read_weights(paths["model.safetensors"])
        ema_w, _ = read_weights(paths["ema.safetensors"])
        load_into(self.net, raw, paths["model.safetensors"])
        load_into(self.ema.model, ema_w, paths["ema.safetensors"])
        try:
            self.opt.load_state_dict(state["optimizer"])
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{paths['train_state.pt']}: optimizer state does not fit ({exc})") from None
        self.elapsed, self.best = float(state["elapsed"]), dict(state["best"])
        self.skipped = int(state.get("skipped", 0))
        self.losses = list(state.get("pending_losses", torch.zeros(0)).to(self.device).unbind())
        torch.set_rng_state(state["rng"]["torch"])
        if torch.cuda.is_available() and state["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def setup_step(self) -> None:
        """The data loader from this step on, the (DDP-wrapped, maybe compiled) loss module, precision and
        the non-finite check's state."""
        tc, info, device = self.tc, self.info, self.device
        ddp = LossModule(self.net, self.schedule, self.config)
        if info.enabled:
            ids = [device.index] if device.type == "cuda" else None
            ddp = nn.parallel.DistributedDataParallel(ddp, device_ids=ids)
        self.per_rank = tc.batch_size // info.world
        start, stop = info.rank * self.per_rank, (info.rank + 1) * self.per_rank
        self.budget = tc.budget_minutes is not None and tc.budget_fixed_at is None  # max_steps still to be fixed
        last = _UNBOUNDED if self.budget else tc.max_steps
        self.loader = torch.utils.data.DataLoader(
            StepDataset(self.batches, self.step, last, tc.batch_size, start, stop),
            batch_size=None,
            shuffle=False,
            num_workers=tc.num_workers,
            persistent_workers=False,
            pin_memory=device.type == "cuda",
            generator=torch.Generator(),  # the iterator draws a base seed: not from the global RNG (dropout)
        )
        self.amp = torch.bfloat16 if device.type == "cuda" else None
        self.compile_mode = should_compile(tc.compile, device.type, tc.budget_minutes)
        self.step_module = ddp
        if self.compile_mode != "off":
            self.step_module = torch.compile(ddp, mode=None if self.compile_mode == "default" else self.compile_mode)
            self.log.text(
                f"training step compiled with torch.compile (mode {self.compile_mode}; config compile={tc.compile})"
            )
        # a non-finite loss or gradient is detected at every step: read at once where that is free (CPU) or
        # needed (skip_nonfinite), else kept on the device and read before anything is logged, validated or saved
        self.read_now = tc.skip_nonfinite or device.type != "cuda"
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def setup_validation(self) -> None:
        """Validation's protocol, compile="auto" decided once for every validation ahead (raw and EMA each
        time). When compiling, one shared network is compiled once and gets the raw or EMA weights copied in
        (every rank decides for the largest share, so that ranks agree)."""
        tc, info, val_pairs = self.tc, self.info, self.val_pairs
        shapes = [tuple(im.shape[-2:]) for im, _ in val_pairs[: -(-len(val_pairs) // info.world)]]
        left = 0 if self.budget else tc.max_steps - self.step  # a budget run's length is unknown yet
        validations = 2 * (left // tc.val_every + 1 if tc.val_every else 1)
        self.val_opts, self.val_net = None, None
        if val_pairs:
            probe = self.predictor(self.net)
            self.val_opts = validation_options(probe, self.config, shapes, validations)
            if self.val_opts.compile != "off":
                self.val_net = copy.deepcopy(self.net).eval()
                self.log.text(f"validation compiles ({self.val_opts.compile}): {probe.compile_decision.reason}")

    def predictor(self, net: nn.Module) -> Predictor:
        """A Predictor over `net`'s weights as they are now (validation's; the compiled shared network,
        when validation compiles, gets a copy of them)."""
        if self.val_net is not None and net is not self.val_net:
            self.val_net.load_state_dict(net.state_dict())
            net = self.val_net
        return Predictor(self.config, net, self.device, self.schedule)

    # -- between steps ----------------------------------------------------------------------------
    def stop_if_nonfinite(self, bad: bool | None = None) -> None:
        """Stop (every rank) when a step's loss or gradient was not finite, naming the step."""
        if bad is None:
            bad = int(self.first_bad) >= 0
        if any_rank(bad, self.device, self.info):
            at = int(self.first_bad) if int(self.first_bad) >= 0 else self.step
            kept = (
                f"the last checkpoint (step {self.saved_step}) is kept"
                if self.saved_step is not None
                else "nothing was saved"
            )
            msg = (
                f"step {at + 1}: the loss or a gradient is not finite (NaN or Inf); training stopped and {kept} "
                f"in {self.out}; resume with a lower --lr, check the data, or skip such steps with "
                "--set train.skip_nonfinite=true"
            )
            self.log.text(msg)
            raise NonFiniteError(msg)

    def save(self) -> None:
        """The checkpoint set (segdiff.checkpoint): raw and EMA weights, training state; rank 0 writes."""
        self.stop_if_nonfinite()  # never save weights a non-finite step has touched
        out, step = self.out, self.step
        if self.info.main:
            meta = {"step": step, "preset": self.config.preset}
            rng_state = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng_state["cuda"] = torch.cuda.get_rng_state_all()
            state = {
                "step": step,
                "elapsed": self.elapsed,
                "best": self.best,
                "optimizer": self.opt.state_dict(),
                "rng": rng_state,
                "world": self.info.world,
                "skipped": self.skipped,
                "pending_losses": torch.stack(self.losses).cpu() if self.losses else torch.zeros(0),
            }
            files = {
                out / "model.safetensors": (state_dict_cpu(self.net), meta),
                out / "ema.safetensors": (state_dict_cpu(self.ema.model), meta),
                out / "train_state.pt": (state, {}),
            }
            try:
                write_checkpoint(files)
            except UserError as exc:  # a failed write (disk full): the previous checkpoint is untouched
                prev = self.saved_step
                prev = (
                    f"the last complete checkpoint (step {prev}) is kept"
                    if prev is not None
                    else "no checkpoint was saved"
                )
                raise UserError(f"{exc}; training stopped at step {step} and {prev}: fix this, then --resume") from exc
            plot_curves(self.log.rows(), out / "curves.png")
        self.saved_step = step
        barrier(self.info)

    def score_weights(self) -> None:
        """Score the raw and EMA weights on the val images; keep the better as best.safetensors when it
        beats the best so far."""
        if not self.val_pairs:
            return
        self.stop_if_nonfinite()
        t_val, tc, step = _now(), self.tc, self.step
        nets = (("raw", self.net), ("ema", self.ema.model)) if tc.ema_rate else (("raw", self.net),)
        scores = {name: validate(self.predictor(net), self.val_pairs, self.info, self.val_opts) for name, net in nets}
        scores.setdefault("ema", scores["raw"])  # ema_rate 0: the EMA weights are the raw weights
        row = {"kind": "val", "step": step, **{f"{k}_{m}": v[m] for k, v in scores.items() for m in ("iou", "f1")}}
        self.log.record(**row)
        which = max(scores, key=lambda k: scores[k]["iou"])
        best = self.best
        if scores[which]["iou"] > best["iou"]:
            best = self.best = {"iou": scores[which]["iou"], "f1": scores[which]["f1"], "weights": which, "step": step}
            if self.info.main:
                net = self.net if which == "raw" else self.ema.model
                write_files({self.out / "best.safetensors": (state_dict_cpu(net), {"step": step, "weights": which})})
                atomic_write_text(self.out / "best.json", json.dumps(best, indent=2) + "\n")
        self.log.text(
            f"step {step}: val IoU raw {scores['raw']['iou']:.4f} ema {scores['ema']['iou']:.4f} "
            f"(best {best['iou']:.4f} {best.get('weights')} @ {best.get('step')}; {_now() - t_val:.1f} s)"
        )

    def fix_budget(self) -> None:
        """Turn the budget into max_steps once (rank 0 measures; every rank takes its number)."""
        tc, step, t0 = self.tc, self.step, self.t0
        synchronize(self.device)
        now = _now()
        done = step - self.probe_from
        measured = self.probe_t0 is not None and done > 0
        probe_s = (now - self.probe_t0) if measured else (now - t0)
        probe_n = done if measured else max(step, 1)
        n = steps_for_budget(tc.budget_minutes * 60, now - t0, probe_s, probe_n, step)
        n = int(all_reduce_sum([float(n) if self.info.main else 0.0], self.device, self.info)[0])
        # a new config, never a change in place: max_steps and when it was fixed, saved with the run
        self.tc = replace(tc, max_steps=n, budget_fixed_at=step)
        self.config = replace(self.config, train=self.tc)
        if self.info.main:
            self.config.save(self.out / "config.json")
        self.log.record(
            kind="budget",
            step=step,
            max_steps=n,
            budget_s=tc.budget_minutes * 60,
            elapsed_s=now - t0,
            seconds_per_step=probe_s / probe_n,
            probe_steps=probe_n,
        )
        self.log.text(
            f"budget {tc.budget_minutes:g} min: {probe_s / probe_n:.4f} s/step measured over steps "
            f"{step - probe_n}..{step} after {now - t0:.1f} s -> max_steps fixed at {n} (config.json)"
        )
        self.bar.total = n
        self.bar.refresh()

    def log_losses(self, n_steps: int, waited: float) -> None:
        """The mean loss since the last log line (over ranks), lr, speed and data-wait fraction."""
        tc, step = self.tc, self.step
        self.stop_if_nonfinite()
        local = float(torch.stack(self.losses).mean()) if self.losses else float("nan")
        mean_loss = all_reduce_sum([local], self.device, self.info)[0] / self.info.world
        if not math.isfinite(mean_loss) and not tc.skip_nonfinite:
            raise NonFiniteError(f"loss became {mean_loss} at step {step}; lower --lr or check the data")
        now = _now()
        self.log.record(
            kind="train",
            step=step,
            loss=mean_loss if math.isfinite(mean_loss) else None,
            lr=learning_rate(tc, step - 1),
            steps_per_s=n_steps / max(now - self.last_log, 1e-9),
            elapsed_s=now - self.t0,
            # host time blocked on the data loader / wall time of the interval (1 = starved)
            data_wait_frac=waited / max(now - self.last_log, 1e-9),
            **({"skipped": self.skipped} if tc.skip_nonfinite else {}),
        )
        self.bar.set_postfix(loss=f"{mean_loss:.4f}")
        self.losses, self.last_log = [], now

    # -- the loop -----------------------------------------------------------------------------------
    def take_step(self, batch) -> None:
        """One optimizer step on `batch` (Algorithm 2's body), with its non-finite check."""
        tc, info, step = self.tc, self.info, self.step
        batch = tuple(v.to(self.device, non_blocking=True) for v in batch)
        levers = step_levers(self.config, step, info.rank * self.per_rank, (info.rank + 1) * self.per_rank)
        if levers:  # issue 20's self-conditioning rows / one-pass phase; valid (None for binary masks) first
            rows = None if levers[0] is None else levers[0].to(self.device)
            batch = (*batch[:4], batch[4] if len(batch) > 4 else None, rows, levers[1])
        if info.enabled:  # each rank its own dropout masks, keyed so that a resumed run continues exactly
            torch.manual_seed(rng.key(tc.seed, "dropout", info.rank, step))
        for group in self.opt.param_groups:
            group["lr"] = learning_rate(tc, step)
        compiling_now = step == self.first_step and self.compile_mode != "off"
        tc_start = _now() if compiling_now else None
        try:
            loss, finite = train_step(
                self.step_module, self.net, self.opt, self.ema, batch, step, tc.grad_clip, self.amp, tc.skip_nonfinite
            )
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
            raise UserError(
                f"step {step + 1}: out of memory for a batch of {self.per_rank} x {tuple(batch[0].shape[-2:])} on "
                f"{self.device}; use a smaller --batch-size (or more processes with torchrun); the last "
                f"checkpoint (step {self.saved_step}) is kept"
            ) from None
        if compiling_now:
            synchronize(self.device)
            self.log.text(f"first step (torch.compile {self.compile_mode} included): {_now() - tc_start:.1f} s")
        faults.point("train.step")
        if tc.skip_nonfinite:
            if not bool(finite):
                self.skipped += 1
                self.log.text(f"step {step + 1}: non-finite loss or gradient; step skipped ({self.skipped} so far)")
        elif self.read_now:
            if not bool(finite):
                self.first_bad.fill_(step)
            self.stop_if_nonfinite(not bool(finite))
        else:
            self.first_bad = torch.where((self.first_bad < 0) & ~finite, step, self.first_bad)
        self.step += 1
        if not tc.skip_nonfinite or bool(finite):  # (no host sync unless skipping)
            self.losses.append(loss.detach())

    def run(self) -> dict:
        tc, info = self.tc, self.info
        self.first_step = self.step
        pend = probe_end(tc)
        self.probe_from = max(
            tc.budget_warmup_steps, self.first_step + 1
        )  # a resumed run measures again after one step
        if self.probe_from >= pend:
            self.probe_from = self.first_step
        self.probe_t0 = None
        self.t0, self.last_log, n_steps = _now() - self.elapsed, _now(), 0
        waited = 0.0  # seconds spent waiting for the data loader since the last log line
        self.bar = tqdm(
            total=tc.max_steps, initial=self.step, disable=not (self.progress and info.main), desc="train", unit="step"
        )
        stopped_by = "max_steps"
        try:
            self.net.train()
            batches_it = iter(self.loader)
            while self.step < tc.max_steps:
                if self.budget and tc.budget_fixed_at is None:
                    if self.step == self.probe_from:
                        synchronize(self.device)
                        self.probe_t0 = _now()
                    # at the probe's end; earlier only if the budget is already spent (a very slow or busy machine)
                    if self.step >= pend or (
                        self.step > self.first_step and _now() - self.t0 >= tc.budget_minutes * 60
                    ):
                        self.fix_budget()
                        tc = self.tc  # the fixed max_steps
                        if self.step >= tc.max_steps:
                            break
                tw = _now()
                try:
                    batch = next(batches_it)  # image, x0, t, eps (and valid for multi-class data)
                except StopIteration:
                    break
                waited += _now() - tw
                late = tc.max_minutes is not None and (_now() - self.t0) / 60 >= tc.max_minutes
                if tc.max_minutes is not None and any_rank(late, self.device, info):  # ranks stop together
                    stopped_by = "max_minutes"
                    break
                self.take_step(batch)
                n_steps += 1
                self.bar.update(1)
                if self.step % tc.log_every == 0 or self.step == tc.max_steps:
                    self.log_losses(n_steps, waited)
                    waited, n_steps = 0.0, 0
                self.elapsed = _now() - self.t0
                if tc.val_every and self.step % tc.val_every == 0:
                    self.net.eval()
                    self.score_weights()
                    self.net.train()
                if tc.save_every and self.step % tc.save_every == 0:
                    self.save()
        except KeyboardInterrupt:
            self.elapsed = _now() - self.t0
            self.save()
            self.log.text(f"interrupted at step {self.step}; saved")
            raise
        finally:
            self.bar.close()
        return self.finish(stopped_by)

    def finish(self, stopped_by: str) -> dict:
        """The last validation and checkpoint, the closing log line, and the run's summary."""
        tc, step = self.tc, self.step
        self.elapsed = _now() - self.t0
        self.net.eval()
        if self.val_pairs and not (tc.val_every and step % tc.val_every == 0 and stopped_by == "max_steps"):
            self.score_weights()
        self.save()
        if stopped_by == "max_steps" and tc.budget_fixed_at is not None:
            stopped_by = "budget"
        skipped = self.skipped
        self.log.text(
            f"finished at step {step} ({stopped_by}), {self.elapsed:.1f} s; best val {self.best}"
            + (f"; {skipped} non-finite step(s) skipped" if skipped else "")
        )
        shutdown(self.info)  # destroys the process group if init_distributed created it
        summary = {
            "step": step,
            "elapsed_s": self.elapsed,
            "best": self.best,
            "stopped_by": stopped_by,
            "run": str(self.out),
            "max_steps": tc.max_steps,
            "compile": self.compile_mode,
        }
        return summary | ({"skipped_nonfinite": skipped} if skipped else {})
