"""Cached per file and model, read once, never waiting for the model; base norms kept from load time."""

from __future__ import annotations

import os
import threading

import pytest
from doctor_helpers import TINY, lora_tensors, scaled_up, single, stack_of

from studio.engine.norms import weight_norms
from studio.loras.synthetic import write_lora
from studio.service import Studio
from studio.stack.schema import Stack


def test_weight_changes_read_no_file_and_a_new_doctor_reads_the_disk_cache(studio, manager, write):
    a = write("a.safetensors", lora_tensors(seed=1))
    b = write("b.safetensors", lora_tensors(seed=2))
    first = studio.doctor(TINY, stack_of(single(a), single(b)))
    assert studio.doctor_engine.files_read == 2
    reweighted = stack_of(single(a, 0.5, 2.0), single(b, -1.0))
    again = studio.doctor(TINY, reweighted)
    assert studio.doctor_engine.files_read == 2  # only scales changed: nothing read
    f1 = {(f.name, f.expert): f for f in first.loras}
    f2 = {(f.name, f.expert): f for f in again.loras}
    assert f2[("a", "low")].relative_effect == pytest.approx(2.0 * f1[("a", "low")].relative_effect)
    p1, p2 = (next(p for p in r.pairs if p.expert == "high") for r in (first, again))
    assert p2.cosine == pytest.approx(-p1.cosine)  # b at −1 on the high-noise expert

    fresh = Studio(studio.settings, manager=manager)  # a restart: same cache folder
    third = fresh.doctor(TINY, reweighted)
    assert fresh.doctor_engine.files_read == 0 and fresh.doctor_engine.cache.disk_reads >= 3
    assert third.to_json() == again.to_json()


def test_a_file_changed_on_disk_is_read_again(studio, write, library):
    path = write("a.safetensors", lora_tensors(seed=1))
    other = write("b.safetensors", lora_tensors(seed=2))
    stack = stack_of(single(path), single(other))
    before = studio.doctor(TINY, stack)
    write_lora(library / "a.safetensors", scaled_up(lora_tensors(seed=1), 2.0))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    after = studio.doctor(TINY, stack)
    assert studio.doctor_engine.files_read == 4  # the new a, and b again for the new pair (a, b)
    b1, b2 = (next(f for f in r.loras if f.name == "a") for r in (before, after))
    assert b2.relative_effect == pytest.approx(2.0 * b1.relative_effect, rel=1e-6)


def test_the_doctor_never_waits_for_the_model_lock(studio, manager, write):
    path = write("a.safetensors", lora_tensors(seed=1))
    done = threading.Event()
    results = []

    def run():
        results.append(studio.doctor(TINY, stack_of(single(path))))
        done.set()

    with manager._lock:  # a render holding the model
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        finished = done.wait(timeout=60)
    worker.join(timeout=60)
    assert finished and results and results[0].loras[0].relative_effect > 0


def test_base_norms_are_read_at_load_and_do_not_see_a_fused_stack(studio, manager, write, demo_model_dir):
    from diffusers import WanTransformer3DModel

    fresh = WanTransformer3DModel.from_pretrained(demo_model_dir, subfolder="transformer")
    expected = weight_norms(fresh)
    kept = manager.base_norms["transformer"]
    assert set(kept) == set(expected)
    for name, norm in expected.items():
        assert kept[name].total_sq == pytest.approx(norm.total_sq, rel=1e-5)
    path = write("a.safetensors", lora_tensors(seed=1))
    stack = stack_of(single(path))
    plain = studio.doctor(TINY, stack)
    manager.apply_stack(stack, fuse=True)
    try:
        fused = studio.doctor(TINY, stack)
    finally:
        manager.apply_stack(Stack())
    assert fused.to_json() == plain.to_json()
