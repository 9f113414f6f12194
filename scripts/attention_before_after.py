"""Issue 19, bug 2: attention on SDPA's fused kernel, before and after, in one run on this CPU.

    PYTHONPATH=src python scripts/attention_before_after.py time            # tiny network at 256 x 256
    PYTHONPATH=src python scripts/attention_before_after.py peak old|new G  # one 512 x 512 image, pad mode
    PYTHONPATH=src python scripts/attention_before_after.py estimate SIZE G # peak RSS vs segdiff.memory

"old" is the layout of commit da62af6 (q, k, v split from the 1x1 convolution's [N, 3C, L] output: a last
dimension of stride L, which sends scaled_dot_product_attention to its math kernel), patched in for the
measurement; "new" is segdiff.model.blocks.Attention as it is. One thread; run `peak` and `estimate` in a
fresh process each (they read the process's peak RSS). Results: docs/results.md.
"""

import json
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from segdiff.model import blocks

NEW = blocks.Attention.forward


def old_forward(self, x, emb=None):
    n, c, h, w = x.shape
    qkv = self.qkv(self.norm(x).reshape(n, c, h * w))
    q, k, v = qkv.reshape(n, 3, self.num_heads, c // self.num_heads, h * w).transpose(-1, -2).unbind(1)
    out = F.scaled_dot_product_attention(q, k, v)
    out = out.transpose(-1, -2).reshape(n, c, h * w)
    return x + self.proj(out).reshape(n, c, h, w)


def use(kind: str) -> None:
    blocks.Attention.forward = old_forward if kind == "old" else NEW


def timing(rows: int, repeats: int = 5) -> dict:
    """Median seconds of one forward of the tiny network on `rows` inputs of 256 x 256, old and new layouts
    interleaved (old, new, old, new; one warm-up call each) so that drift of a shared machine hits both."""
    from segdiff.config import preset
    from segdiff.model import build_network

    torch.manual_seed(0)
    cfg = preset("tiny")
    net = build_network(cfg, "cpu").eval()
    x, t = torch.randn(rows, 1, 256, 256), torch.full((rows,), 50)
    with torch.no_grad():
        cond = net.encode_image(torch.randn(1, 3, 256, 256))
        res: dict[str, list[float]] = {}
        for kind in ("old", "new", "old", "new"):
            use(kind)
            net(x, t, cond)
            for _ in range(repeats):
                t0 = time.perf_counter()
                net(x, t, cond)
                res.setdefault(kind, []).append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in res.items()}


def peak(kind: str, G: int) -> dict:
    """Peak RSS of SegDiff('tiny').predict on one 512 x 512 image, pad mode, G generations in one batch, 2 steps."""
    from segdiff.api import SegDiff

    use(kind)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = SegDiff("tiny", "cpu")
    t0 = time.perf_counter()
    model.predict(torch.rand(3, 512, 512), generations=G, steps=2, batch_generations=G, mode="pad")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": kind, "generations": G, "rss_before_kb": base, "peak_rss_kb": rss, "s": time.perf_counter() - t0}


def estimate(size: int, G: int) -> dict:
    """Peak RSS growth of one prediction (pad, 1 step, G generations in one batch) against predict_bytes."""
    from segdiff.api import SegDiff
    from segdiff.memory import predict_bytes

    model = SegDiff("tiny", "cpu")
    model.predict(torch.rand(3, 32, 32), generations=1, steps=1)  # lazy allocations outside the measurement
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model.predict(torch.rand(3, size, size), generations=G, steps=1, batch_generations=G, mode="pad")
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    est = predict_bytes(model.config, 1, G, size, size, model.device)["total"]
    return {"size": size, "generations": G, "measured_MB": grown / 2**20, "estimate_MB": est / 2**20}


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "time":
        for rows in (1,):
            print(json.dumps({"rows": rows, "median_s": timing(rows)}), flush=True)
    elif sys.argv[1] == "peak":
        print(json.dumps(peak(sys.argv[2], int(sys.argv[3]))), flush=True)
    else:
        print(json.dumps(estimate(int(sys.argv[2]), int(sys.argv[3]))), flush=True)
