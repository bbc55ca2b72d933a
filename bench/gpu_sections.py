"""The measurements of ``bench.gpu_check``, one section at a time (see its docstring for what each holds)."""

from __future__ import annotations

import gc
import importlib.metadata
import itertools
import os
import platform
import shutil
import time
from typing import Any

import torch

from bench import gpu_build
from bench.common import median, sync
from bench.gpu_build import Subject
from bench.gpu_log import note_failure
from bench.subjects import forward_flops

GIB = 2**30
PEAK_TFLOPS = (  # dense bf16 tensor-core peaks, by a substring of the device name
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("H800", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("RTX 4090", 165.0),
)
VERSIONS = ("torch", "diffusers", "peft", "transformers", "accelerate", "safetensors", "huggingface_hub",
            "triton", "numpy", "tokenizers", "ftfy", "pillow")  # fmt: skip


def run_all(record, subject: Subject, device: str, *, quick: bool, sections: list[str]) -> None:
    """Each section in order; one that fails part-way is recorded under ``errors`` and the next runs."""
    env = record.section("env")
    env.run("device", lambda: device_info(device))
    env.run("versions", versions)
    if "env" in sections:
        env.run("attention", lambda: attention(subject, device), needs_s=5)
        env.run("matmul", lambda: matmul(device), needs_s=3)
    state: dict[str, Any] = {"repeats": 1 if quick else 3, "quick": quick}
    expert_parts = [
        ("forward", lambda: forward_section(record, subject, device, state)),
        ("soak", lambda: soak_section(record, subject, device, state, changes=10 if quick else 50)),
        ("compiled", lambda: compiled_section(record, subject, device, state)),
    ]
    try:
        for name, part in expert_parts:
            if name in sections:
                _guarded(record, name, part)
    finally:
        state.clear()
        free(device)
    if "render" in sections:
        _guarded(record, "render", lambda: render_section(record, subject, device, quick=quick))
    if "compiled" in sections and not quick:  # last: the least needed, and it builds the expert again
        try:
            _guarded(record, "compiled_base", lambda: compiled_base_section(record, subject, device))
        finally:
            state.clear()
            free(device)


def _guarded(record, name: str, part) -> None:
    try:
        part()
    except Exception as exc:
        note_failure(record, name, exc)


# ----------------------------------------------------------------------------- helpers
def free(device: str) -> None:
    import torch._dynamo

    torch._dynamo.reset()
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / GIB if device == "cuda" else None


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def timed(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def per_forward(fn, repeats: int, device: str, *, warmup: int = 1) -> dict[str, Any]:
    for _ in range(warmup):
        fn()
    reset_peak(device)
    times = [timed(fn) for _ in range(repeats)]
    return {"s": median(times), "samples_s": times, "peak_gib": peak_gib(device)}


def peak_flops(name: str) -> float | None:
    if os.environ.get("BENCH_GPU_PEAK_TFLOPS"):
        return float(os.environ["BENCH_GPU_PEAK_TFLOPS"]) * 1e12
    return next((t * 1e12 for key, t in PEAK_TFLOPS if key in name), None)


# ----------------------------------------------------------------------------- env
def device_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "kind": device,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "compilers": {c: shutil.which(c) for c in ("cc", "gcc", "g++", "clang")},
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            name=props.name,
            capability=f"{props.major}.{props.minor}",
            total_gib=props.total_memory / GIB,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            peak_tflops_table=(peak_flops(props.name) or 0) / 1e12 or None,
        )
    else:
        info["name"] = platform.processor() or platform.machine()
    return info


def versions() -> dict[str, str | None]:
    out = {}
    for name in VERSIONS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def attention(subject: Subject, device: str) -> dict[str, Any]:
    """diffusers' attention backend, the SDPA kernel(s) that run at the real shape, and each backend's speed."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    cfg = subject.transformer
    heads, head_dim, tokens = int(cfg["num_attention_heads"]), int(cfg["attention_head_dim"]), subject.tokens
    out: dict[str, Any] = {"diffusers_backend": str(_AttentionBackendRegistry.get_active_backend()[0].value)}
    if device != "cuda":
        return out
    out["sdpa_enabled"] = {
        "flash": torch.backends.cuda.flash_sdp_enabled(),
        "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
        "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
        "math": torch.backends.cuda.math_sdp_enabled(),
    }
    q, k, v = (torch.randn(1, heads, tokens, head_dim, device=device, dtype=torch.bfloat16) for _ in range(3))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    sdpa(q, k, v)
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            sdpa(q, k, v)
            sync()
        marks = ("attention", "fmha", "flash", "cudnn", "attn")
        kernels = sorted({e.key for e in prof.key_averages() if any(m in e.key.lower() for m in marks)})
        out["sdpa_default_kernels"] = [k[:120] for k in kernels] or None
    except Exception as exc:  # no CUPTI: the speeds below still tell the backends apart
        out["sdpa_default_kernels"] = f"profiler failed: {type(exc).__name__}: {str(exc)[:160]}"
    flops = 4.0 * tokens * tokens * heads * head_dim
    from torch.nn.attention import SDPBackend, sdpa_kernel

    speeds = {}
    for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            continue
        try:
            with sdpa_kernel([backend]):
                sdpa(q, k, v)
                seconds = median(timed(lambda: sdpa(q, k, v)) for _ in range(3))
            speeds[name.lower()] = {"ms": seconds * 1e3, "tflops": flops / seconds / 1e12}
        except Exception as exc:
            speeds[name.lower()] = {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
    seconds = median(timed(lambda: sdpa(q, k, v)) for _ in range(3))
    speeds["default"] = {"ms": seconds * 1e3, "tflops": flops / seconds / 1e12}
    out["sdpa_speed"] = speeds
    out["shape"] = [1, heads, tokens, head_dim]
    return out


def matmul(device: str) -> dict[str, Any]:
    n, dtype = (8192, torch.bfloat16) if device == "cuda" else (512, torch.float32)  # bf16 is slow on CPUs
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    seconds = median(timed(lambda: a @ b) for _ in range(10 if device == "cuda" else 3))
    return {"n": n, "dtype": str(dtype), "ms": seconds * 1e3, "tflops": 2 * n**3 / seconds / 1e12}


# ----------------------------------------------------------------------------- one expert
def forward_section(record, subject: Subject, device: str, state: dict) -> None:
    from studio.engine import lora_ops
    from studio.vram.estimate import estimate

    sec = record.section("forward")
    cfg = subject.transformer
    flops = forward_flops(cfg, subject.tokens, subject.shapes.text_len)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    peak = peak_flops(name) if device == "cuda" else None
    matmul_tflops = (record.data["sections"].get("env", {}).get("matmul") or {}).get("tflops")
    sec.put("subject", {
        "layers": cfg["num_layers"], "frames": subject.frames, "height": subject.height, "width": subject.width,
        "tokens": subject.tokens, "pflop_per_forward": flops / 1e15, "peak_tflops": peak and peak / 1e12,
        "bound_s": flops / peak if peak else None,
        "bound_at_measured_matmul_s": flops / (matmul_tflops * 1e12) if matmul_tflops and device == "cuda" else None,
        "lora_rank": subject.rank, "loras": subject.loras,
    })  # fmt: skip
    reset_peak(device)
    start = time.perf_counter()
    model = gpu_build.expert(subject, seed=1, device=device)
    inputs = gpu_build.forward_inputs(subject, device=device)
    sec.put("build_s", time.perf_counter() - start)
    state.update(model=model, inputs=inputs)

    def forward():
        with torch.no_grad():
            model(**inputs)

    state["forward"] = forward
    repeats = state["repeats"]
    base = sec.run("base", lambda: per_forward(forward, repeats, device))

    def vram() -> dict[str, Any] | None:
        if device != "cuda" or not base:
            return None
        est = estimate(subject.shapes, width=subject.width, height=subject.height, frames=subject.frames,
                       mode="gpu", cfg=False)  # fmt: skip
        phase = est.phases["denoise_high"]
        parts = {k: phase.get(k, 0) for k in ("expert_high_weights", "activations", "latents")}
        estimated = sum(parts.values())
        measured = base["peak_gib"] * GIB
        return {"estimated_gib": estimated / GIB, "measured_gib": measured / GIB,
                "measured_over_estimated": measured / estimated, "parts_gib": {k: v / GIB for k, v in parts.items()}}  # fmt: skip

    sec.run("vram", vram)

    def load():
        states, seconds = [], []
        for i in range(subject.loras):
            sd = gpu_build.lora_state_dict(subject, seed=i + 1)
            seconds.append(timed(lambda sd=sd, i=i: lora_ops.load_adapter(model, sd, f"lora{i}")))
            states.append(sd)
        state["loras"] = states
        state["names"] = [f"lora{i}" for i in range(subject.loras)]
        return {"each_s": seconds}

    if sec.run("load_loras", load, needs_s=10) is None:
        return
    weights = dict.fromkeys(state["names"], 1.0)
    sec.run("weight_change_s", lambda: median(
        timed(lambda: lora_ops.set_adapter_weights(model, weights)) for _ in range(10)))  # fmt: skip
    sec.run("unfused4", lambda: per_forward(forward, repeats, device), needs_s=5)
    if not state["quick"]:

        def peft_own():
            lora_ops.disable_fast_forward(model)
            try:
                return per_forward(forward, repeats, device)
            finally:
                lora_ops.enable_fast_forward(model)

        sec.run("peft_unfused4", peft_own, needs_s=10)
    sec.run("fuse_s", lambda: timed(lambda: lora_ops.fuse(model)))
    sec.run("fused4", lambda: per_forward(forward, repeats, device), needs_s=5)
    sec.run("unfuse_s", lambda: timed(lambda: lora_ops.unfuse(model)))


def _weights_of(model) -> list[torch.Tensor]:
    from studio.engine import lora_ops

    return [layer.get_base_layer().weight for layer in lora_ops.lora_layers(model)]


def soak_section(record, subject: Subject, device: str, state: dict, *, changes: int) -> None:
    """Fused weight changes (unfuse, new weights, fuse) and how far the base weights drift (bf16)."""
    from studio.engine import lora_ops

    sec = record.section("soak")
    model, names = state.get("model"), state.get("names")
    if model is None or not names:
        record.note("skipped", "soak", "needs the forward section's expert with its LoRAs")
        return
    weights = _weights_of(model)
    need = sum(w.numel() * w.element_size() for w in weights)
    on = device
    if device == "cuda" and torch.cuda.mem_get_info()[0] < 1.3 * need:
        on = "cpu"  # not enough room for a copy on the card
    backup = sec.run("backup", lambda: [w.detach().to(on, copy=True) for w in weights], store=False)
    if backup is None:
        return
    sec.put("setup", {"tensors": len(weights), "gib": need / 2**30, "backup_on": on, "changes": changes})
    gen = torch.Generator().manual_seed(0)

    def compare() -> dict[str, Any]:
        changed, worst = 0, 0.0
        with torch.no_grad():
            for w, b in zip(weights, backup, strict=True):
                diff = (w.float() - b.to(w.device).float()).abs().max().item()
                if diff:
                    changed += 1
                    worst = max(worst, diff / max(b.float().abs().max().item(), 1e-30))
        return {"tensors_changed": changed, "max_error_vs_tensor_max": worst}

    def change() -> float:
        new = {n: float(torch.rand(1, generator=gen)) * 1.5 for n in names}

        def step():
            if lora_ops.is_fused(model):
                lora_ops.unfuse(model)
            lora_ops.set_adapter_weights(model, new)
            lora_ops.fuse(model)

        return timed(step)

    times = []
    for i in range(changes):
        if sec.left() < 5:
            record.note("skipped", "soak.changes", f"time budget after {i} changes")
            break
        seconds = sec.run(f"change_{i + 1}_s", change, store=False)
        if seconds is None:
            break
        times.append(seconds)
        if i == 0:
            lora_ops.unfuse(model)
            sec.run("after_first", compare)
    if lora_ops.is_fused(model):
        lora_ops.unfuse(model)
    sec.put("changes_done", len(times))
    sec.put("change_s", median(times) if times else None)
    sec.run("after_last", compare)
    backup.clear()  # frees the copy


# ----------------------------------------------------------------------------- compiled
def compiled_section(record, subject: Subject, device: str, state: dict) -> None:
    import torch._dynamo

    from studio.engine import compile as compiled
    from studio.engine import lora_ops

    sec = record.section("compiled")
    model, forward, states = state.get("model"), state.get("forward"), state.get("loras")
    if model is None or not states:
        record.note("skipped", "compiled", "needs the forward section's expert and LoRAs")
        return
    repeats, names = state["repeats"], state["names"]
    rows = subject.rank * subject.loras
    if lora_ops.is_fused(model):
        lora_ops.unfuse(model)
    lora_ops.delete_adapters(model, names)
    bank = compiled.prepare(model, rows=rows, slots=8)
    sec.put("room", {"rows": rows, "gib": bank.nbytes() / GIB})
    for name, sd in zip(names, states, strict=True):
        bank.load(sd, name)
    lora_ops.set_adapter_weights(model, dict.fromkeys(names, 1.0))
    if sec.run("first_forward_s", lambda: timed(forward), needs_s=20) is None:
        return
    sec.run("hotswap4", lambda: per_forward(forward, repeats, device, warmup=0))
    recompiled: dict[str, bool] = {}
    extra = gpu_build.lora_state_dict(subject, seed=99)

    def check(label: str, change) -> None:
        def go():
            change()
            try:
                with compiled.no_recompile():
                    seconds = timed(forward)
                recompiled[label] = False
            except torch._dynamo.exc.RecompileError as exc:
                recompiled[label] = True
                record.note("errors", f"compiled.recompile.{label}", str(exc)[:2000])
                seconds = timed(forward)  # let it recompile, to go on
            sec.put("recompiled", dict(recompiled))
            return seconds

        sec.run(f"{label}_forward_s", go, needs_s=5)

    check(
        "weights",
        lambda: lora_ops.set_adapter_weights(model, {n: 0.5 + 0.1 * i for i, n in enumerate(names)}),
    )
    check("all_off", lambda: lora_ops.set_adapter_weights(model, {}))

    def swap():
        bank.delete(names[-1])
        bank.load(extra, "extra")
        lora_ops.set_adapter_weights(model, {**dict.fromkeys(names[:-1], 1.0), "extra": 0.8})

    check("swap", swap)
    check("remove_all", lambda: bank.delete(list(bank.names)))
    sec.run("empty_room", lambda: per_forward(forward, repeats, device, warmup=0))
    compiled.release(model)


def compiled_base_section(record, subject: Subject, device: str) -> None:
    """The plain expert compiled the same way (no LoRA room): what compiling alone buys."""
    sec = record.section("compiled_base")
    if sec.left() < 60:
        record.note("skipped", "compiled_base", f"time budget ({sec.left():.0f} s left)")
        return
    model = gpu_build.expert(subject, seed=1, device=device)
    inputs = gpu_build.forward_inputs(subject, device=device)

    def forward():
        with torch.no_grad():
            model(**inputs)

    model.compile_repeated_blocks(fullgraph=True)
    if sec.run("first_forward_s", lambda: timed(forward), needs_s=30) is not None:
        sec.run("base", lambda: per_forward(forward, 3, device, warmup=0))
    for block in model.blocks:
        block._compiled_call_impl = None


# ----------------------------------------------------------------------------- render
def render_section(record, subject: Subject, device: str, *, quick: bool) -> None:
    from studio.engine.memory import MemoryConfig, apply_memory
    from studio.vram.estimate import estimate

    sec = record.section("render")
    free(device)
    start = time.perf_counter()
    pipe = sec.run("pipeline", lambda: gpu_build.pipeline(subject, device=device), store=False, needs_s=20)
    if pipe is None:
        return
    sec.put("build_s", time.perf_counter() - start)
    sec.put("components_gib", {
        name: sum(p.numel() * p.element_size() for p in getattr(pipe, name).parameters()) / GIB
        for name in ("text_encoder", "transformer", "transformer_2", "vae")
    })  # fmt: skip
    sec.put(
        "tokenizer",
        "a small word-level tokenizer (the real UMT5 one is a download); every other part at its real shape",
    )

    def one(mode: str) -> dict[str, Any]:
        marks: list[float] = []

        def on_step(pipe, i, t, kwargs):
            sync()
            marks.append(time.perf_counter())
            return {}

        reset_peak(device)
        sync()
        t0 = time.perf_counter()
        frames = gpu_build.render(pipe, subject, on_step=on_step)
        sync()
        end = time.perf_counter()
        out: dict[str, Any] = {
            "total_s": end - t0,
            "before_first_step_end_s": marks[0] - t0 if marks else None,
            "step_s": [b - a for a, b in itertools.pairwise(marks)],
            "after_last_step_s": end - marks[-1] if marks else None,
            "frames_shape": list(getattr(frames, "shape", []) or []),
            "finite": bool(torch.isfinite(torch.as_tensor(frames)).all()) if frames is not None else None,
        }
        est = estimate(subject.shapes, width=subject.width, height=subject.height, frames=subject.frames,
                       mode=mode if mode in ("gpu", "model-offload") else "gpu", cfg=False)  # fmt: skip
        out["estimated_gib"] = est.torch_peak_bytes / GIB
        out["estimate_peak_phase"] = est.peak_phase
        out["estimate_phase_gib"] = {k: v / GIB for k, v in est.phase_peaks.items()}
        if device == "cuda":
            out["measured_gib"] = torch.cuda.max_memory_allocated() / GIB
            out["reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
            out["measured_over_estimated"] = out["measured_gib"] / out["estimated_gib"]
        return out

    if device != "cuda":
        sec.run("cpu", lambda: one("cpu"), needs_s=5)
        for mode in ("gpu", "model-offload"):
            record.note("skipped", f"render.{mode}", "needs CUDA")
        return

    def gpu():
        apply_memory(pipe, MemoryConfig(mode="gpu"), device=device, is_demo=False)
        return one("gpu")

    sec.run("gpu", gpu, needs_s=30)
    if not quick:
        sec.run("gpu_second", lambda: one("gpu"), needs_s=40)

    def offload():
        setup = timed(
            lambda: apply_memory(pipe, MemoryConfig(mode="model-offload"), device=device, is_demo=False)
        )
        free(device)
        out = one("model-offload")
        out["offload_setup_s"] = setup
        return out

    sec.run("model-offload", offload, needs_s=40)
