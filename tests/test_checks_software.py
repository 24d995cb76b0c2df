"""Software checks against real fake environments: distributions written to a temporary site dir.

Each test sees only its own site dir plus the standard library on sys.path, so what the developer's
venv happens to hold (numpy, say) cannot change an answer.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import make_ctx
from fakeenv import add_dist, add_torch, upstream_site

from avatardoctor.checks import software
from avatardoctor.checks.base import Status

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    """An empty site dir, first and only on sys.path next to the standard library."""
    site = tmp_path / "site"
    site.mkdir()
    stdlib = {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]}
    kept = [p for p in sys.path if p in stdlib or p.endswith((".zip", "lib-dynload"))]
    monkeypatch.setattr(sys, "path", [str(site), *kept])
    importlib.invalidate_caches()
    return site


def run(check, machine="5x4090-pcie", env=None, **config):
    return check.run(make_ctx(machine, env=env, **config))


# ---- sw.python ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "status"), [((3, 10, 14), Status.PASS), ((3, 12, 3), Status.WARN)])
def test_python_pins_3_10(monkeypatch, version, status):
    monkeypatch.setattr(sys, "version_info", (*version, "final", 0))
    result = run(software.check_python)
    assert result.status is status
    assert result.data["version"] == ".".join(map(str, version))
    assert any(sys.executable in d for d in result.details)
    if status is Status.WARN:
        assert "3.10" in result.summary and "python=3.10" in result.remedy


# ---- sw.torch -------------------------------------------------------------------------------------


def test_torch_missing_fails_with_the_pinned_install(site):
    result = run(software.check_torch)
    assert result.status is Status.FAIL
    assert result.remedy == "pip install torch==2.8.0 --index-url https://download.pytorch.org/whl/cu128"
    assert any(sys.executable in d for d in result.details)


def test_torch_cpu_build_fails(site):
    add_torch(site, "2.8.0+cpu", cuda=None)
    result = run(software.check_torch)
    assert result.status is Status.FAIL
    assert "not a CUDA build" in result.summary and "cu128" in result.remedy


def test_torch_matching_driver_passes(site):
    add_torch(site)  # 5x4090-pcie: driver 570, CUDA 12.8
    result = run(software.check_torch)
    assert result.status is Status.PASS
    assert result.summary == "torch 2.8.0+cu128 (CUDA 12.8)"
    assert result.data["cuda"] == "12.8" and result.data["driver_cuda"] == "12.8"


def test_torch_cuda_major_newer_than_driver_fails(site):
    add_torch(site, "2.9.0+cu130", cuda="13.0")
    result = run(software.check_torch, "5xH800-healthy")  # driver 550, CUDA 12.4
    assert result.status is Status.FAIL
    assert result.summary == "driver too old for torch's CUDA 13.0"
    assert result.remedy == "update the driver to a 580+ release, or install a torch build for CUDA <= 12.4"


def test_torch_cuda_minor_newer_than_driver_warns(site):
    add_torch(site)
    result = run(software.check_torch, "5xH800-healthy")
    assert result.status is Status.WARN
    assert "12.8" in result.summary and "12.4" in result.summary
    assert result.remedy.startswith("update the driver to a 570+ release")
    assert any("minor-version compatibility" in d for d in result.details)


def test_torch_driver_unknown_is_not_a_failure(site):
    add_torch(site)
    result = run(software.check_torch, "5x4090")  # a catalogue box: no driver facts
    assert result.status is Status.PASS
    assert any("driver's CUDA version is unknown" in d for d in result.details)


def test_torch_other_version_warns_with_the_pin(site):
    add_torch(site, "2.7.1+cu128")
    result = run(software.check_torch)
    assert result.status is Status.WARN
    assert "upstream pins 2.8.0" in result.summary
    assert result.remedy == "pip " + software.TORCH_INSTALL


def test_torch_unreadable_version_file_warns(site):
    add_dist(site, "torch", "2.8.0", files={"torch/__init__.py": "", "torch/version.py": "x" * (70 * 1024)})
    result = run(software.check_torch)
    assert result.status is Status.WARN and "CUDA build unknown" in result.summary


def test_torch_probe_imports_nothing_in_a_fresh_interpreter(tmp_path):
    site = tmp_path / "site"
    add_torch(site)
    # A torch that cannot be imported: detection must read files, never import the package.
    (site / "torch/__init__.py").write_text("raise SystemExit('torch was imported')\n")
    code = "import sys; from avatardoctor.checks import software as s; b = s.torch_build(); print(b.version, b.cuda, 'torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2.8.0+cu128", "12.8", "False"]


# ---- sw.nccl --------------------------------------------------------------------------------------

NCCL_REQ = 'nvidia-nccl-cu12==2.27.3; platform_system == "Linux"'


def test_nccl_version_found(site):
    add_torch(site, requires=[NCCL_REQ])
    add_dist(site, "nvidia-nccl-cu12", "2.27.3")
    result = run(software.check_nccl)
    assert result.status is Status.PASS and result.summary == "NCCL 2.27.3"


def test_nccl_required_by_torch_but_missing_fails(site):
    add_torch(site, requires=[NCCL_REQ])
    result = run(software.check_nccl)
    assert result.status is Status.FAIL
    assert result.remedy == "pip install nvidia-nccl-cu12==2.27.3"


def test_nccl_mismatching_torch_warns(site):
    add_torch(site, requires=[NCCL_REQ])
    add_dist(site, "nvidia-nccl-cu12", "2.21.5")
    result = run(software.check_nccl)
    assert result.status is Status.WARN and "2.21.5" in result.summary


def test_nccl_undeclared_and_missing_is_unknown_not_failed(site):
    add_torch(site)  # a conda/source build declares no NCCL wheel
    result = run(software.check_nccl)
    assert result.status is Status.WARN
    assert "could not determine" in result.summary and "torch.cuda.nccl.version()" in result.remedy


def test_nccl_skips_without_torch(site):
    assert run(software.check_nccl).status is Status.SKIP


# ---- sw.attention ---------------------------------------------------------------------------------


def test_attention_flash_attn_present_passes(site):
    add_dist(site, "flash_attn", "2.8.3")
    add_dist(site, "nvidia-cudnn-cu12", "9.10.2.21")
    result = run(software.check_attention)
    assert result.status is Status.PASS and result.summary == "flash-attn 2.8.3"
    assert result.data["cudnn"] == "9.10.2.21"


def test_attention_missing_fails_before_the_first_forward_and_mentions_fa3_on_hopper(site):
    """Wan's cross-attention asserts FLASH_ATTN_2_AVAILABLE unless FA3 imports: no flash-attn, no run."""
    add_dist(site, "nvidia-cudnn-cu12", "9.10.2.21")
    result = run(software.check_attention, "5xH800-healthy")
    assert result.status is Status.FAIL and "first DiT forward" in result.summary
    assert (
        result.remedy == "pip install flash-attn==2.8.3 --no-build-isolation (or FlashAttention 3 on these Hopper GPUs)"
    )
    assert any("assert FLASH_ATTN_2_AVAILABLE" in d for d in result.details)


def test_attention_fa3_module_on_hopper_passes(site):
    (site / "flash_attn_interface.py").write_text("raise SystemExit('imported')\n")
    importlib.invalidate_caches()
    result = run(software.check_attention, "5xH800-healthy")
    assert result.status is Status.PASS and "FlashAttention 3" in result.summary


def test_attention_fa3_on_ampere_fails_since_wan_uses_it_whenever_it_imports(site):
    add_dist(site, "flash_attn_3", "3.0.0b1")
    add_dist(site, "flash-attn", "2.8.3")
    result = run(software.check_attention, "4xA100-docker", mode="single")
    assert result.status is Status.FAIL and "not Hopper (cc 8.0)" in result.summary
    assert result.remedy == "pip uninstall flash_attn_3"


def test_attention_deep_imports_it_and_passes_when_it_imports(site):
    add_dist(site, "flash-attn", "2.8.3", files={"flash_attn/__init__.py": ""})
    result = software.check_attention.run(replace(make_ctx("5xH800-healthy"), deep=True))
    assert result.status is Status.PASS and result.summary == "flash-attn 2.8.3 imports in this interpreter"


def test_attention_deep_fails_a_wheel_built_for_another_torch(site):
    """The common failure: pip installed it, but its CUDA extension does not load against this torch."""
    broken = "raise ImportError('flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi')\n"
    add_dist(site, "flash-attn", "2.8.3", files={"flash_attn/__init__.py": broken})
    assert run(software.check_attention, "5xH800-healthy").status is Status.PASS  # installed: metadata alone says yes
    result = software.check_attention.run(replace(make_ctx("5xH800-healthy"), deep=True))
    assert result.status is Status.FAIL
    assert result.summary.endswith("ImportError: flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi")
    assert result.remedy.startswith(
        "reinstall it for this torch and CUDA: pip uninstall -y flash-attn && pip install flash-attn==2.8.3"
    )


# ---- sw.pins --------------------------------------------------------------------------------------


def test_pins_everything_the_entry_imports_passes(site):
    upstream_site(site)
    result = run(software.check_pins)
    assert result.status is Status.PASS, result.summary
    assert (
        "transformers 4.51.3 (upstream pin >=4.49.0,<=4.51.3)" in result.details and "dashscope 1.0.0" in result.details
    )
    assert "gradio" not in result.data  # only the gradio entry imports it


def test_pins_a_missing_import_fails_naming_it(site):
    upstream_site(site)
    shutil.rmtree(next(site.glob("decord-*.dist-info")))
    importlib.invalidate_caches()
    result = run(software.check_pins)
    assert result.status is Status.FAIL
    assert result.summary == "missing what the entry imports: decord (import decord)"
    assert result.remedy == "pip install decord"


def test_pins_the_gradio_entry_also_needs_gradio(site):
    upstream_site(site)
    result = run(software.check_pins, gradio=True)
    assert result.status is Status.FAIL and result.summary == "missing what the entry imports: gradio (import gradio)"


def test_pins_off_pin_versions_warn_with_one_quoted_command(site):
    upstream_site(site)
    for name, version in [("transformers", "4.55.0"), ("numpy", "2.1.0")]:
        shutil.rmtree(next(site.glob(f"{name}-*.dist-info")))
        add_dist(site, name, version)
    result = run(software.check_pins)
    assert result.status is Status.WARN
    assert result.remedy == "pip install 'transformers>=4.49.0,<=4.51.3' 'numpy>=1.23.5,<2'"
    assert result.summary == "off the upstream pins: transformers 4.55.0, numpy 2.1.0"
    assert result.data["numpy"] == {"version": "2.1.0", "pin": ">=1.23.5,<2"}


# ---- sw.ffmpeg ------------------------------------------------------------------------------------


def test_ffmpeg_found_on_path(tmp_path):
    ffmpeg = tmp_path / "ffmpeg"
    ffmpeg.write_text("#!/bin/sh\nexit 0\n")
    ffmpeg.chmod(0o755)
    result = run(software.check_ffmpeg, env={"PATH": str(tmp_path)})
    assert result.status is Status.PASS and result.data["path"] == str(ffmpeg)


def test_ffmpeg_missing_fails(tmp_path):
    result = run(software.check_ffmpeg, env={"PATH": str(tmp_path)})
    assert result.status is Status.FAIL
    assert result.remedy.startswith("apt-get install ffmpeg")
    assert any("FFmpeg execute failed" in d for d in result.details)


def test_checks_are_exported_in_display_order():
    ids = [c.id for c in software.CHECKS]
    assert ids == ["sw.python", "sw.torch", "sw.nccl", "sw.attention", "sw.pins", "sw.ffmpeg"]
