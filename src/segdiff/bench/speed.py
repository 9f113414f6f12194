"""`segdiff benchmark`: inference and training speed, the fast path against the reference path.

For each preset, at its training resolution, with random weights and a random image (speed does not
depend on the weights):

* seconds per image for the protocol (default the paper's: 30 generations x 100 DDPM steps), of the
  fast path (`sample_x0`: G(I) once, generations batched, bf16 autocast on a GPU) and of the reference
  path (`reference_sample_x0`: the authors' way, G(I) at every step, generations one after another, fp16
  on a GPU), measured in the same run, and their ratio. Both are timed on `measure_steps` of the
  protocol's steps (and the reference on `reference_generations` of its generations) and scaled
  linearly to the protocol; the output says so whenever a number is scaled. Every step costs the same
  (respacing changes only the coefficients), and the reference runs generations one after another, so
  the scaling is linear; for the fast path it overcounts G(I), computed once per image, which makes the
  fast path look (slightly) slower, never faster.
* achieved TFLOP/s: FLOPs of one network forward (batch 1) and of one G(I), counted with
  torch.utils.flop_counter.FlopCounterMode, times the calls each path makes; and the fraction of a dense
  matmul peak measured on the same device in the same run (bf16 8192^3 on a GPU; fp32 on a CPU).
* peak memory: torch.cuda.max_memory_allocated on a GPU; on a CPU the process's peak resident set size
  (VmHWM, reset before each measurement where the kernel allows it).
* training throughput (samples/s): our training step (bf16 autocast and fused AdamW on CUDA, gradient
  clipping, EMA update) against a plain eager fp32 step (the same loss, backward, clipping, AdamW with
  PyTorch's default implementation and EMA), at the preset's batch size.
"""

from __future__ import annotations

import copy
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..config import PredictConfig, RunConfig, preset
from ..predict.ensemble import sample_x0
from .reference import reference_amp, reference_sample_x0

PRESETS = ("vaihingen", "monuseg", "cityscapes")

# fast-path variants: name -> PredictConfig overrides
VARIANT_FLAGS = {
    "channels_last": {"channels_last": True},
    "compile": {"compile": "default"},
    "compile-max-autotune": {"compile": "max-autotune"},
    "cudagraphs": {"compile": "reduce-overhead"},  # torch.compile with CUDA-graph capture
}


def variant_overrides(name: str) -> dict:
    """ "default", or flags joined by '+': "channels_last+cudagraphs"."""
    if name == "default":
        return {}
    out: dict = {}
    for part in name.split("+"):
        if part not in VARIANT_FLAGS:
            raise ValueError(f"unknown fast-path variant {part!r}: use default or {', '.join(VARIANT_FLAGS)}")
        out.update(VARIANT_FLAGS[part])
    return out


@dataclass
class Protocol:
    generations: int = PredictConfig.generations  # the paper's protocol: 30 generations x 100 = T DDPM steps
    steps: int = 100
    sampler: str = PredictConfig.sampler
    variance: str = PredictConfig.variance
    measure_steps: int = 20  # steps actually run per timed call (both paths); scaled to `steps`
    reference_generations: int | None = None  # generations actually run by the reference (None = all)
    repeats: int = 3  # timed calls per path (median reported), after `warmup` untimed calls
    warmup: int = 1
    batch_generations: int | None = None  # None = the preset's predict.batch_generations
    variants: list[str] = field(default_factory=lambda: ["default"])
    reference_batched: bool = False  # also time the authors' way with generations batched
    reference: bool = True
    train_steps: int = 10  # timed training steps per mode (after 3 warm-up steps)
    train_warmup: int = 3
    train: bool = True
    matmul_n: int | None = None  # None: 8192 on CUDA, 1024 on CPU
    quick: bool = False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


class PeakMemory:
    """Peak memory of the code inside the block: CUDA allocator peak, or the process's peak RSS on a CPU."""

    def __init__(self, device: torch.device):
        self.device, self.bytes, self.kind = device, 0, ""

    def __enter__(self):
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "torch.cuda.max_memory_allocated"
        else:
            try:  # writing 5 to clear_refs resets VmHWM (Linux >= 4.0)
                Path("/proc/self/clear_refs").write_text("5")
                self.kind = "peak RSS of the process (VmHWM, reset before this measurement)"
            except OSError:
                self.kind = "peak RSS of the process since it started (VmHWM; could not reset)"
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            _sync(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self.bytes = _vm_hwm()
        return False


def _vm_hwm() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(device: torch.device, n: int | None = None, repeats: int = 5) -> dict:
    """Dense matmul throughput measured here: bf16 n^3 (n = 8192) on CUDA, fp32 (n = 1024) on a CPU."""
    cuda = device.type == "cuda"
    n = n or (8192 if cuda else 1024)
    dtype = torch.bfloat16 if cuda else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    iters = 10 if cuda else 3
    times = _timed(lambda: [a @ b for _ in range(iters)], device, repeats, warmup=1)
    best = min(times) / iters

    return {
        "dtype": str(dtype).replace("torch.", ""),
        "n": n,
        "tflops": 2 * n**3 / best / 1e12,
        "note": f"best of {repeats} x {iters} matmuls {n}x{n} @ {n}x{n}",
    }


def _random_image(cfg: RunConfig, device: torch.device) -> torch.Tensor:
    s = cfg.data.size
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, cfg.model.image_channels, s, s, generator=g).to(device)


def _label(measured_steps: int, steps: int, measured_gens: int, gens: int) -> str:
    parts = []
    if measured_steps != steps:
        parts.append(f"{measured_steps} of {steps} steps")
    if measured_gens != gens:
        parts.append(f"{measured_gens} of {gens} generations")
    return "measured on " + ", ".join(parts) + ", scaled linearly" if parts else "measured at the full protocol"


def bench_inference(cfg: RunConfig, device: torch.device, proto: Protocol) -> dict:
    """Fast path(s) and reference path for one preset; returns a dict of results."""
    from ..api import SegDiff

    torch.manual_seed(0)
    model = SegDiff(cfg, device)
    net, sched = model.net.eval(), model.schedule
    image = _random_image(cfg, device)
    G, K, Km = proto.generations, proto.steps, min(proto.measure_steps, proto.steps)
    bg = proto.batch_generations or cfg.predict.batch_generations
    base = PredictConfig(
        generations=G, sampling_steps=Km, sampler=proto.sampler, variance=proto.variance, batch_generations=bg
    )
    scale_steps = K / Km

    # FLOPs of one network forward per generation (batch 1) and of G(I) for one image (counts do not
    # depend on the precision)
    s = cfg.data.size
    x1 = torch.randn(1, 1, s, s, device=device)
    t1 = torch.zeros(1, dtype=torch.long, device=device)
    with torch.no_grad():
        cond1 = net.encode_image(image)
        flops_net = count_flops(lambda: net(x1, t1, cond1))
        flops_g = count_flops(lambda: net.encode_image(image))
    params = sum(p.numel() for p in net.parameters())
    params_g = sum(p.numel() for p in net.G.parameters())
    out: dict = {
        "preset": cfg.preset,
        "resolution": [s, s],
        "params": params,
        "params_G": params_g,
        "gflops_per_forward_without_G": flops_net / 1e9,
        "gflops_G_per_image": flops_g / 1e9,
        "batch_generations": bg,
        "fast": {},
        "reference": {},
    }

    def record(
        kind: str,
        name: str,
        times: list[float],
        flops_measured: float,
        scale: float,
        label: str,
        mem: PeakMemory,
        amp: str,
        warmup: int,
    ) -> None:
        t = statistics.median(times)
        out[kind][name] = {
            "seconds_per_image": t * scale,
            "measured_seconds": t,
            "measured_seconds_all": times,
            "warmup_calls": warmup,
            "scaled": scale != 1.0,
            "scale": scale,
            "how": label,
            "amp": amp,
            "tflops": flops_measured / t / 1e12,
            "peak_memory_bytes": mem.bytes,
            "peak_memory_kind": mem.kind,
        }

    for variant in proto.variants:
        opts = replace(base, **variant_overrides(variant))
        vnet = net if variant == "default" else copy.deepcopy(net)  # channels_last converts in place
        run = lambda vnet=vnet, opts=opts: sample_x0(vnet, sched, image, [0], opts)  # noqa: E731
        # a compiled variant compiles in its first call; CUDA-graph trees record in the next ones
        warmup = max(proto.warmup, 2) if opts.compile != "off" else proto.warmup
        with PeakMemory(device) as mem:
            times = _timed(run, device, proto.repeats, warmup)
        flops = flops_g + G * Km * flops_net
        amp = "bf16" if device.type == "cuda" else "fp32"
        record("fast", variant, times, flops, scale_steps, _label(Km, K, G, G), mem, amp, warmup)
        if vnet is not net:
            del vnet
        if device.type == "cuda":
            torch.cuda.empty_cache()

    if proto.reference:
        # one generation after another: time is linear in the generations, so a subset may be scaled;
        # the batched variant is not linear in its batch and always runs all generations
        ways = [("sequential", False, min(proto.reference_generations or G, G))]
        if proto.reference_batched:
            ways.append(("batched", True, G))
        for name, batched, gm in ways:
            ref_opts = replace(base, generations=gm)
            run = lambda o=ref_opts, b=batched: reference_sample_x0(net, sched, image, [0], o, batched=b)  # noqa: E731
            with PeakMemory(device) as mem:
                times = _timed(run, device, proto.repeats, proto.warmup)
            flops = gm * Km * (flops_g + flops_net)
            label = _label(Km, K, gm, G)
            record(
                "reference", name, times, flops, scale_steps * G / gm, label, mem, reference_amp(device), proto.warmup
            )
    ref = out["reference"].get("sequential")
    for res in out["fast"].values():
        if ref:
            res["speedup_vs_reference"] = ref["seconds_per_image"] / res["seconds_per_image"]
        if "batched" in out["reference"]:
            res["speedup_vs_reference_batched"] = (
                out["reference"]["batched"]["seconds_per_image"] / res["seconds_per_image"]
            )

    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def bench_training(cfg: RunConfig, device: torch.device, proto: Protocol, mode: str) -> dict:
    """Samples per second of one training step. mode "ours": train/loop.py's step (LossModule, bf16
    autocast on CUDA, gradient clipping, EMA update) with AdamW(fused=True) on CUDA; "plain": the same
    step in eager fp32 with PyTorch's default AdamW. On a CPU both are the same fp32 step."""
    from ..api import SegDiff
    from ..train.ema import EMA
    from ..train.loop import LossModule, train_step

    torch.manual_seed(0)
    model = SegDiff(cfg, device)
    net = model.net.train()
    tc = cfg.train
    cuda = device.type == "cuda"
    ours = mode == "ours"
    opt_kw = {"fused": True} if (ours and cuda) else {}
    opt = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, **opt_kw)
    ema = EMA(net, tc.ema_rate)
    loss_mod = LossModule(model)
    n, s = tc.batch_size, cfg.data.size
    g = torch.Generator().manual_seed(0)
    image = torch.rand(n, cfg.model.image_channels, s, s, generator=g).to(device)
    x0 = (torch.rand(n, 1, s, s, generator=g) > 0.5).float().mul(2).sub(1).to(device)
    t = torch.randint(len(model.schedule), (n,), generator=g).to(device)
    eps = torch.randn(n, 1, s, s, generator=g).to(device)
    amp = torch.bfloat16 if (ours and cuda) else None
    step_no = [0]

    def step():
        train_step(loss_mod, net, opt, ema, (image, x0, t, eps), step_no[0], tc.grad_clip, amp)
        step_no[0] += 1

    def steps():
        for _ in range(proto.train_steps):
            step()

    with PeakMemory(device) as mem:
        for _ in range(proto.train_warmup):
            step()
        seconds = _timed(steps, device, repeats=1, warmup=0)[0]
    result = {
        "mode": mode,
        "batch_size": n,
        "steps": proto.train_steps,
        "seconds": seconds,
        "samples_per_s": n * proto.train_steps / seconds,
        "amp": "bf16" if amp is not None else "fp32",
        "optimizer": "AdamW(fused=True)" if opt_kw else "AdamW (PyTorch default implementation)",
        "peak_memory_bytes": mem.bytes,
        "peak_memory_kind": mem.kind,
    }

    if cuda:
        torch.cuda.empty_cache()
    return result


def environment(device: torch.device) -> dict:
    env = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        env.update(
            device_name=torch.cuda.get_device_name(device),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
        )
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env


def run_benchmark(presets: list, device: torch.device, proto: Protocol, progress=print) -> dict:
    """presets: names (or RunConfig objects, for tests). Returns the JSON-ready report."""
    report = {"environment": environment(device), "protocol": asdict(proto), "presets": []}
    progress(f"matmul peak on {report['environment']['device_name']} ...")
    report["matmul_peak"] = matmul_peak(device, proto.matmul_n)
    peak = report["matmul_peak"]["tflops"]
    for item in presets:
        cfg = preset(item) if isinstance(item, str) else item
        name = cfg.preset
        progress(f"{name}: inference ({cfg.data.size}x{cfg.data.size}) ...")
        res = bench_inference(cfg, device, proto)
        for kind in ("fast", "reference"):
            for r in res[kind].values():
                r["fraction_of_matmul_peak"] = r["tflops"] / peak
        if proto.train:
            progress(f"{name}: training step ...")
            res["train"] = {m: bench_training(cfg, device, proto, m) for m in ("ours", "plain")}
            res["train"]["speedup"] = res["train"]["ours"]["samples_per_s"] / res["train"]["plain"]["samples_per_s"]
        report["presets"].append(res)
    return report


def format_report(report: dict) -> str:
    env, proto = report["environment"], report["protocol"]
    mp = report["matmul_peak"]
    lines = [
        f"device: {env['device_name']} ({env['device']}), torch {env['torch']}"
        + (f", CUDA {env.get('cuda')}" if "cuda" in env else f", {env['cpu_threads']} CPU threads"),
        f"protocol: {proto['generations']} generations x {proto['steps']} steps, {proto['sampler']}"
        f" (variance {proto['variance']}); timed on {proto['measure_steps']} steps, median of {proto['repeats']}"
        f" after {proto['warmup']} warm-up",
        f"matmul peak: {mp['tflops']:.2f} TFLOP/s ({mp['dtype']}, {mp['n']}^3)",
        "",
        f"{'preset':<11}{'path':<28}{'s/image':>10}{'vs ref':>8}{'TFLOP/s':>9}{'of peak':>9}{'peak mem':>11}  how",
    ]
    for res in report["presets"]:
        rows = [(f"fast:{k}", v) for k, v in res["fast"].items()]
        rows += [(f"reference:{k}", v) for k, v in res["reference"].items()]
        for name, r in rows:
            sp = r.get("speedup_vs_reference")
            lines.append(
                f"{res['preset']:<11}{name:<28}{r['seconds_per_image']:>10.3f}{(f'{sp:.1f}x' if sp else ''):>8}"
                f"{r['tflops']:>9.3f}{100 * r['fraction_of_matmul_peak']:>8.1f}%"
                f"{r['peak_memory_bytes'] / 2**20:>8.0f} MiB  {r['how']} ({r['amp']})"
            )
        if "train" in res:
            tr = res["train"]
            lines.append(
                f"{res['preset']:<11}train samples/s: ours {tr['ours']['samples_per_s']:.2f} ({tr['ours']['amp']},"
                f" {tr['ours']['optimizer']}), plain fp32 {tr['plain']['samples_per_s']:.2f},"
                f" {tr['speedup']:.2f}x (batch {tr['ours']['batch_size']}, {tr['ours']['steps']} steps)"
            )
    lines.append("")
    if env["device"].startswith("cpu") and any("train" in res for res in report["presets"]):
        lines.append("on a CPU both training modes run the same fp32 step (bf16 and fused AdamW are CUDA-only)")
    kinds = {r["peak_memory_kind"] for res in report["presets"] for r in res["fast"].values()}
    lines.append("peak memory: " + "; ".join(sorted(kinds)))
    return "\n".join(lines)


def cli(args) -> int:
    """`segdiff benchmark` (arguments from segdiff.bench.add_parsers)."""
    from ..errors import UserError

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if args.threads:
        torch.set_num_threads(args.threads)
    proto = Protocol(generations=args.generations, steps=args.steps, sampler=args.sampler)
    presets = args.preset or (["tiny"] if args.quick else list(PRESETS))
    if args.quick:
        # a smoke run: every number is still measured and scaled the same way, on less work
        proto = replace(
            proto,
            measure_steps=2,
            reference_generations=3,
            repeats=1,
            warmup=1,
            train_steps=2,
            train_warmup=1,
            quick=True,
        )
    if args.measure_steps:
        proto.measure_steps = args.measure_steps
    if args.repeats:
        proto.repeats = args.repeats
    if args.train_steps:
        proto.train_steps = args.train_steps
    if args.reference_generations:
        proto.reference_generations = args.reference_generations
    proto.batch_generations = args.batch_generations
    proto.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    proto.reference_batched = args.reference_batched
    proto.reference = not args.no_reference
    proto.train = not args.no_train
    for v in proto.variants:
        try:
            variant_overrides(v)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    T = min(preset(p).diffusion.steps for p in presets)
    checks = {
        "--generations": (proto.generations, proto.generations >= 1, "must be at least 1"),
        "--steps": (proto.steps, 1 <= proto.steps <= T, f"must be between 1 and T = {T}"),
        "--batch-generations": (args.batch_generations, (args.batch_generations or 1) >= 1, "must be at least 1"),
        "--repeats": (proto.repeats, proto.repeats >= 1, "must be at least 1"),
    }
    for flag, (value, ok, problem) in checks.items():
        if not ok:
            raise UserError(f"{flag} {value}: {problem}")
    if not 1 <= proto.measure_steps <= proto.steps:
        raise UserError(f"--measure-steps {proto.measure_steps}: must be between 1 and --steps {proto.steps}")
    if device.type == "cpu" and not args.quick and any(p != "tiny" for p in presets):
        print("note: paper presets on a CPU take a long time; --quick runs the tiny preset")
    report = run_benchmark(presets, device, proto, progress=lambda m: print(m, flush=True))
    print(format_report(report))
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"report: {path}")
    return 0
