"""The measuring tools of `segdiff benchmark`: a timer that synchronises the device, the peak memory of a
block, FLOPs of a call, the dense matmul peak of the device, and the seeded network and image every
measurement runs on."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ...config import RunConfig
from ...devices import synchronize


def timed(fn, device: torch.device, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


class PeakMemory:
    """Peak memory of the code inside the block: CUDA allocator peak, or the process's peak RSS on a CPU."""

    def __init__(self, device: torch.device):
        self.device, self.bytes, self.kind = device, 0, ""

    def __enter__(self):
        if self.device.type == "cuda":
            synchronize(self.device)
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
            synchronize(self.device)
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
    times = timed(lambda: [a @ b for _ in range(iters)], device, repeats, warmup=1)
    best = min(times) / iters

    return {
        "dtype": str(dtype).replace("torch.", ""),
        "n": n,
        "tflops": 2 * n**3 / best / 1e12,
        "note": f"best of {repeats} x {iters} matmuls {n}x{n} @ {n}x{n}",
    }


def seeded_model(cfg: RunConfig, device: torch.device):
    """A SegDiff of `cfg` with random weights drawn from seed 0 (speed does not depend on the weights)."""
    from ...api import SegDiff

    torch.manual_seed(0)
    return SegDiff(cfg, device)


def random_image(cfg: RunConfig, device: torch.device) -> torch.Tensor:
    s = cfg.data.size
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, cfg.model.image_channels, s, s, generator=g).to(device)


def scaling_label(timed_sampling_steps: int, sampling_steps: int, measured_gens: int, gens: int) -> str:
    parts = []
    if timed_sampling_steps != sampling_steps:
        parts.append(f"{timed_sampling_steps} of {sampling_steps} steps")
    if measured_gens != gens:
        parts.append(f"{measured_gens} of {gens} generations")
    return "measured on " + ", ".join(parts) + ", scaled linearly" if parts else "measured at the full protocol"
