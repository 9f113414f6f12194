"""Compile time of the noise predictor in a fresh process, cold or warm (`segdiff benchmark --compile-times`),
and the rule that decides from it whether compile="auto" compiles (`auto_rule`).

    python -m segdiff.bench.compile_probe --preset vaihingen --rows 30 --cache DIR [--device cuda] [--mode default]

Builds the preset's network (random weights), compiles its forward with the cache folder DIR and runs
it at [rows, 1, size, size] under the prediction autocast. Prints one JSON line: seconds from process
start to the end of the first compiled call (what a second `segdiff predict` waits before sampling), of
the first call, of a steady call, and their difference (the compile time). With an empty DIR the compile
is cold; run again on the same DIR it is warm (inductor's FX graph, autotuning and Triton caches).
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:
    import torch


def probe(preset_name: str, rows: int, cache: str, device: str, mode: str, amp: str = "auto") -> dict:
    import torch

    from ..config import PredictConfig, preset
    from ..devices import synchronize
    from ..model import build_network
    from ..predict.ensemble import autocast, prepare_net

    t_import = time.perf_counter() - T_START
    dev = torch.device(device)
    cfg = preset(preset_name)
    torch.manual_seed(0)
    net = build_network(cfg, dev).eval()
    s = cfg.data.size
    opts = PredictConfig(compile=mode, compile_cache=cache, amp=amp)
    fwd = prepare_net(net, opts)
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, cfg.model.image_channels, s, s, generator=g).to(dev)
    x = torch.randn(rows, 1, s, s, generator=g).to(dev)
    # the timesteps as the samplers pass them (a 0-d tensor expanded: stride 0), so that the graph compiled
    # here is the one sampling looks up in the cache
    t = torch.arange(cfg.diffusion.steps, device=dev)[-1].expand(rows)

    with torch.no_grad():
        with autocast(dev, amp):
            cond = net.encode_image(image)
        synchronize(dev)
        t_ready = time.perf_counter() - T_START

        def call():
            with autocast(dev, amp):
                fwd(x, t, cond)
            synchronize(dev)

        t0 = time.perf_counter()
        call()
        first = time.perf_counter() - t0
        t_first_done = time.perf_counter() - T_START
        steady = []
        for _ in range(3):
            t0 = time.perf_counter()
            call()
            steady.append(time.perf_counter() - t0)
    steady_s = sorted(steady)[1]
    return {
        "preset": preset_name,
        "rows": rows,
        "size": s,
        "mode": mode,
        "device": str(dev),
        "torch": torch.__version__,
        "import_s": t_import,
        "ready_s": t_ready,  # process start -> network built, G(I) done (before the first compiled call)
        "first_call_s": first,
        "steady_call_s": steady_s,
        "compile_s": first - steady_s,
        "start_to_first_call_done_s": t_first_done,
    }


# -- the driver (`segdiff benchmark --compile-times`) and the break-even rule of compile="auto" --------------


def compile_times(
    name: str, device: torch.device, rows: int, mode: str, folder: str, threads: int | None = None
) -> dict:
    """Cold and warm compile of preset `name`'s network in fresh processes (segdiff.bench.compile_probe):
    the first run fills the empty cache `folder`, the second finds it filled."""
    import segdiff

    env = dict(os.environ)
    src = str(Path(segdiff.__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "segdiff.bench.compile_probe", "--preset", name, "--rows", str(rows)]
    cmd += ["--cache", folder, "--device", str(device), "--mode", mode]
    if threads:
        cmd += ["--threads", str(threads)]
    out: dict = {"cache_folder": folder, "mode": mode, "rows": rows}
    for label in ("cold", "warm"):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            out[label] = {"error": f"exit {proc.returncode}: {tail}", "process_wall_s": wall}
            break
        out[label] = {**json.loads(proc.stdout.strip().splitlines()[-1]), "process_wall_s": wall}
    return out


def auto_rule(res: dict, device, proto) -> dict:
    """What compile="auto" decides for this preset (its constants), and the same rule with this run's numbers
    (`res`: bench_inference's result for the preset, with its compile_times; `proto`: the benchmark's Protocol)."""
    from ..predict import compiling  # here, not at the top: the probe's process times its own imports

    G, K, bg = proto.generations, proto.sampling_steps, res["batch_generations"]
    calls = compiling.calls_for(1, G, bg, K)
    rows = res["rows_per_call"]
    est_call = rows * res["gflops_per_forward_without_G"] * 1e9 / (compiling.EAGER_TFLOPS * 1e12)

    def break_even(per_call: float, compile_s: float, speedup: float) -> int | None:
        gain = calls * per_call * (1 - 1 / speedup)
        return math.ceil(compile_s / gain) if gain > 0 else None

    one = compiling.auto_compile(device.type, calls, est_call)
    out = {
        "calls_per_image": calls,
        "rule": "compile <=> calls * seconds_per_call * (1 - 1/speedup) > compile_seconds (CUDA only)",
        "constants": {
            "compile_seconds": compiling.COMPILE_SECONDS,
            "speedup": compiling.SPEEDUP,
            "eager_tflops": compiling.EAGER_TFLOPS,
            "estimated_seconds_per_call": est_call,
        },
        "one_image_decision": one.mode,
        "one_image_reason": one.reason,
        "images_to_compile": break_even(est_call, compiling.COMPILE_SECONDS, compiling.SPEEDUP)
        if device.type == "cuda"
        else None,
    }
    eager = res["fast"].get("default")
    compiled = next((r for r in res["fast"].values() if r.get("compile", "off") != "off"), None)
    if eager and compiled:
        cold = res.get("compile_times", {}).get("cold", {}).get("compile_s")
        compile_s = cold if cold is not None else compiled.get("in_process_compile_seconds")
        speedup = eager["seconds_per_image"] / compiled["seconds_per_image"]
        per_call = eager["ms_per_call"] / 1000
        out["measured"] = {
            "seconds_per_call": per_call,
            "speedup": speedup,
            "compile_seconds": compile_s,
            "compile_seconds_from": "cold process" if cold is not None else "first call in this process",
            "images_to_compile": break_even(per_call, compile_s, speedup) if compile_s is not None else None,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", required=True)
    p.add_argument("--rows", type=int, default=30)
    p.add_argument("--cache", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--mode", default="default")
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(json.dumps(probe(args.preset, args.rows, args.cache, args.device, args.mode)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
