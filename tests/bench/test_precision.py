"""`precision: auto`: bf16 on GPUs and on CPUs with native bf16 (AVX512_BF16 / AMX); fp32 elsewhere,
with the CPU detection mocked both ways (torch's probe, and /proc/cpuinfo when torch has none); the
attention kernel that goes with it."""

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
def test_auto_on_a_cpu_is_bf16_with_explicit_attention_only_where_bf16_is_native(detect, native):
    """On native-bf16 CPUs bf16 measured 1.6-3.5x fp32 once attention leaves SDPA's CPU flash kernel;
    elsewhere bf16 is emulated. The reason names the choice; explicit keys are kept."""
    detect(native)
    dtype, reason = precision.choose("auto", CPU)
    assert dtype == (torch.bfloat16 if native else None)
    assert ("native bf16 CPU" in reason) is native and ("no native bf16" in reason) is not native
    assert precision.fused_attention(CPU, dtype)[0] is not native
    assert precision.fused_attention(CPU, None) == (True, "attention: SDPA")
    assert precision.fused_attention(torch.device("cuda", 0), torch.bfloat16)[0] is True   # GPUs keep SDPA
    assert precision.choose("auto", torch.device("cuda", 0))[0] == torch.bfloat16
    assert precision.choose("bf16", CPU) == (torch.bfloat16, "precision: bf16 (set in the config)")


def test_the_explicit_attention_path_computes_what_sdpa_computes():
    """cmim.models.kernels only moves timm's blocks between two kernels of the same attention: outputs
    and gradients agree to float rounding, and every attention module (decoder blocks too) is switched."""
    from cmim.models.kernels import set_fused_attention
    from cmim.models.vit import build_encoder

    torch.manual_seed(0)
    encoder = build_encoder({"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": 8, "img_size": 32})
    x = torch.randn(3, 3, 32, 32)
    outs, grads = [], []
    for fused in (True, False):
        assert set_fused_attention(encoder, fused) == 2
        encoder.zero_grad()
        y = encoder.forward_features(x)
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append(encoder.blocks[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-4)
