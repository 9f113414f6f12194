"""Compile time of the noise predictor in a fresh process, cold or warm (`segdiff benchmark --compile-times`).

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
