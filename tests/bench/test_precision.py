"""`precision: auto`: bf16 on GPUs and, on CPUs with native bf16 (AVX512_BF16 / AMX), for encoders wide
enough to gain; fp32 elsewhere, with the CPU detection mocked both ways (torch's probe, and
/proc/cpuinfo when torch has none)."""

from __future__ import annotations

import pytest
import torch

from cmim.train import precision
from cmim.train.precision import autocast_dtype

CPU = torch.device("cpu")


@pytest.fixture
def detect(monkeypatch):
    """Set what the detection sees: torch's probe result (None = no probe) and the cpuinfo flags."""
    def set_(probe, flags=frozenset(), isa_cap=None):
        precision.cpu_has_native_bf16.cache_clear()
        monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
        if isa_cap is None:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa_cap)
        monkeypatch.setattr(precision, "_torch_probe", lambda: probe)
        monkeypatch.setattr(precision, "cpuinfo_flags", lambda path=precision.CPUINFO: frozenset(flags))
    yield set_
    precision.cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize("probe,flags,native", [
    (True, (), True), (False, ("avx512_bf16",), False),          # torch's probe wins when it exists
    (None, ("avx2", "avx512f", "avx512_bf16"), True), (None, ("amx_bf16", "amx_tile"), True),
    (None, ("avx2", "fma"), False), (None, ("avx512f", "avx512bw"), False), (None, (), False),
])
def test_auto_picks_bf16_only_on_native_bf16_cpus(detect, probe, flags, native):
    detect(probe, flags)
    assert precision.cpu_has_native_bf16() is native
    assert autocast_dtype("auto", CPU) == (torch.bfloat16 if native else None)
    # explicit keys are never overridden
    assert autocast_dtype("fp32", CPU) is None and autocast_dtype("bf16", CPU) == torch.bfloat16


@pytest.mark.parametrize("cap,native", [
    ("AVX2", False), ("avx512_core", False), ("AVX512_CORE_VNNI", False),   # below bf16: emulated
    ("AVX512_CORE_BF16", True), ("AVX512_CORE_AMX", True), ("DEFAULT", True), ("", True),
])
def test_a_onednn_isa_cap_below_bf16_turns_native_bf16_off(detect, cap, native):
    """ONEDNN_MAX_CPU_ISA=AVX2 makes an AMX machine run as an AVX2 one would: auto must then be fp32."""
    detect(True, isa_cap=cap)
    assert precision.cpu_has_native_bf16() is native
    assert autocast_dtype("auto", CPU) == (torch.bfloat16 if native else None)


def test_auto_is_bf16_on_gpus_whatever_the_cpu(detect):
    detect(False)
    assert autocast_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16


def test_cpuinfo_flags_parsing(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512_bf16 amx_tile\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert precision.cpuinfo_flags(info) == {"fpu", "avx2", "avx512_bf16", "amx_tile"}
    assert precision.cpuinfo_flags(tmp_path / "missing") == frozenset()
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert "bf16" in precision.cpuinfo_flags(tmp_path / "arm")


def test_this_machine_answers(monkeypatch):
    """The real detection runs (no mock) and agrees with torch's own probe where torch has one."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    precision.cpu_has_native_bf16.cache_clear()
    probe = precision._torch_probe()
    assert precision.cpu_has_native_bf16() in (True, False)
    if probe is not None:
        assert precision.cpu_has_native_bf16() is probe


@pytest.mark.parametrize("native", [True, False])
def test_auto_picks_by_speed_on_native_bf16_cpus_by_the_encoders_width(detect, native):
    """The demo's width-128 ViT ran slower in bf16 on a Xeon with AMX (0.63-0.90x), ViT-B/16 1.86x
    faster: auto picks fp32 for the first and bf16 for the second, and says why."""
    detect(native)
    demo, reason_demo = precision.choose("auto", CPU, width=128)
    vit_b, reason_b = precision.choose("auto", CPU, width=768)
    assert demo is None and "fp32" in reason_demo
    assert vit_b == (torch.bfloat16 if native else None)
    assert ("width-128" in reason_demo) is native and ("no native bf16" in reason_b) is not native
    assert precision.choose("auto", torch.device("cuda", 0), width=128)[0] == torch.bfloat16   # GPUs: bf16 always
    assert precision.choose("bf16", CPU, width=128) == (torch.bfloat16, "precision: bf16 (set in the config)")
