"""The reports of `segdiff benchmark`: the text printed at the end, and the Markdown table of docs/results.md."""

from __future__ import annotations


def format_report(report: dict) -> str:
    env, proto = report["environment"], report["protocol"]
    mp = report["matmul_peak"]
    lines = [
        f"device: {env['device_name']} ({env['device']}), torch {env['torch']}"
        + (f", CUDA {env.get('cuda')}" if "cuda" in env else f", {env['cpu_threads']} CPU threads"),
        f"protocol: {proto['generations']} generations x {proto['sampling_steps']} steps, {proto['sampler']}"
        f" (variance {proto['variance']}); timed on {proto['timed_sampling_steps']} steps, median of"
        f" {proto['repeats']}"
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
        per_call = ", ".join(f"{k} {v['ms_per_call']:.1f}" for k, v in res["fast"].items() if "ms_per_call" in v)
        if per_call:
            lines.append(f"{res['preset']:<11}ms per network call of {res['rows_per_call']} rows: {per_call}")
        if "preset_default" in res:
            d = res["preset_default"]
            lines.append(
                f"{res['preset']:<11}preset default ({d['generations']} generations x {d['sampling_steps']} steps): "
                f"{d['seconds_per_image_eager']:.3f} s/image eager ({d['how']})"
            )
        ct = res.get("compile_times")
        if ct:
            parts = []
            for label in ("cold", "warm"):
                c = ct.get(label)
                if c and "error" in c:
                    parts.append(f"{label}: {c['error']}")
                elif c:
                    parts.append(
                        f"{label} {c['compile_s']:.1f} s (process start to first compiled call done "
                        f"{c['start_to_first_call_done_s']:.1f} s)"
                    )
            lines.append(f"{res['preset']:<11}compile ({ct['mode']}, fresh processes): " + "; ".join(parts))
        if "auto" in res:
            a = res["auto"]
            text = f"compile=auto, 1 image: {a['one_image_decision']}"
            if a.get("images_to_compile"):
                text += f"; compiles from {a['images_to_compile']} images at this protocol"
            m = a.get("measured")
            if m and m.get("images_to_compile"):
                text += (
                    f"; with this run's numbers ({m['speedup']:.2f}x, {m['compile_seconds']:.0f} s compile): "
                    f"from {m['images_to_compile']} images"
                )
            lines.append(f"{res['preset']:<11}{text}")
        if "train" in res:
            tr = res["train"]
            lines.append(
                f"{res['preset']:<11}train samples/s: ours {tr['ours']['samples_per_s']:.2f} ({tr['ours']['amp']},"
                f" {tr['ours']['optimizer']}), plain fp32 {tr['plain']['samples_per_s']:.2f},"
                f" {tr['speedup']:.2f}x (batch {tr['ours']['batch_size']}, {tr['ours']['optimizer_steps']} steps)"
            )
            if "compiled" in tr:
                c = tr["compiled"]
                lines.append(
                    f"{res['preset']:<11}train samples/s: eager {tr['ours']['samples_per_s']:.2f}, torch.compile "
                    f"{c['samples_per_s']:.2f} ({tr['compiled_vs_eager']:.2f}x); "
                    f"compile time {c['compile_seconds']:.1f} s"
                )
    lines.append("")
    if env["device"].startswith("cpu") and any("train" in res for res in report["presets"]):
        lines.append("on a CPU both training modes run the same fp32 step (bf16 and fused AdamW are CUDA-only)")
    kinds = {r["peak_memory_kind"] for res in report["presets"] for r in res["fast"].values()}
    lines.append("peak memory: " + "; ".join(sorted(kinds)))
    if report.get("profile"):
        pr = report["profile"]
        top = ", ".join(f"{t['name'][:50]} {100 * t['share']:.0f}%" for t in pr["top"][:5])
        lines.append(f"profile ({pr['preset']}, compile {pr['compile']}): SDPA {pr['sdpa_backend']}; top: {top}")
    return "\n".join(lines)


def format_markdown(report: dict) -> str:
    """The GPU table of docs/results.md, one row per preset and fast-path variant."""

    def mem_gib(r: dict) -> str:
        return f"{r['peak_memory_bytes'] / 2**30:.2f} GiB"

    env, mp = report["environment"], report["matmul_peak"]
    head = (
        f"{env['device_name']} ({env['device']}), torch {env['torch']}"
        + (
            f", CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}"
            if "cuda" in env
            else f", {env['cpu_threads']} threads"
        )
        + f"; matmul peak {mp['tflops']:.3g} TFLOP/s ({mp['dtype']}, measured in this run)"
    )
    proto = report["protocol"]
    lines = [
        head,
        "",
        f"| preset | path | ms / call (rows) | s / image {proto['generations']} x {proto['sampling_steps']} |"
        " s / image preset default (eager) | TFLOP/s | of peak | compile cold / warm (s) |"
        " warm start to first call (s) | peak memory |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in report["presets"]:
        ct = res.get("compile_times") or {}
        cold, warm = ct.get("cold") or {}, ct.get("warm") or {}
        d = res.get("preset_default")
        for k, r in res["fast"].items():
            compiled = r.get("compile", "off") != "off"
            cw = f"{cold['compile_s']:.0f} / {warm['compile_s']:.0f}" if compiled and "compile_s" in warm else ""
            start = f"{warm['start_to_first_call_done_s']:.1f}" if compiled and "compile_s" in warm else ""
            pd = f"{d['seconds_per_image_eager']:.2f}" if d and k == "default" else ""
            lines.append(
                f"| {res['preset']} | fast: {k} | {r['ms_per_call']:.1f} ({res['rows_per_call']}) |"
                f" {r['seconds_per_image']:.2f} | {pd} | {r['tflops']:.3g} |"
                f" {100 * r['fraction_of_matmul_peak']:.1f} % | {cw} | {start} | {mem_gib(r)} |"
            )
        for k, r in res["reference"].items():
            lines.append(
                f"| {res['preset']} | reference: {k} | | {r['seconds_per_image']:.2f} | | {r['tflops']:.3g} |"
                f" {100 * r['fraction_of_matmul_peak']:.1f} % | | | {r['peak_memory_bytes'] / 2**30:.2f} GiB |"
            )
    return "\n".join(lines) + "\n"
