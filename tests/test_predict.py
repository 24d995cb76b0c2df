"""The memory-fit predictor and planner against the issue's acceptance figures, from the packaged
reference (no GPU needed), and the predict / plan / calibrate commands as a user runs them."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_ctx

from avatardoctor.advice import hardware_advice, smallest_change
from avatardoctor.checks import fit, gpu
from avatardoctor.checks.base import Status
from avatardoctor.ckpt.components import reference_summary
from avatardoctor.config import resolve_config
from avatardoctor.estimates import DEFAULT_TERMS
from avatardoctor.machine.catalogue import catalogue_machine
from avatardoctor.planner import entry_argv, make_plan
from avatardoctor.predict import predict
from avatardoctor.units import GIB
from avatardoctor.upstream import padded_size

SUMMARY = reference_summary()


def prediction(spec: str, mode: str | None = None, **config):
    m = catalogue_machine(spec)
    return predict(resolve_config(len(m.gpus), mode, **config), m.gpus, SUMMARY, DEFAULT_TERMS)


def gib(x: float) -> float:
    return x / GIB


# ---- acceptance figures ------------------------------------------------------------------------------


def test_seed_layout_on_4090s_is_the_seeds_25_65_figure():
    p = prediction("4x4090", "seed-4gpu")
    dit = p.gpus[0]
    assert dit.role == "DiT rank 0" and p.gpus[3].role == "VAE rank 3"
    assert abs(gib(dit.loaded_bytes) - 21.48) <= 0.5
    assert abs(gib(dit.components["root_unshard"]) - 4.17) <= 0.02
    assert gib(dit.loaded_bytes + dit.components["root_unshard"]) >= 25.65 - 0.5
    assert gib(dit.peak_bytes) >= 25.65
    assert dit.components["inflight_blocks"] > 0 and dit.components["activations"] > 0  # shown on top
    assert p.memory_verdict == "wont-fit" and dit.verdict == "wont-fit"
    assert p.verdict == "wont-run"  # ... and upstream refuses the layout whatever the memory
    assert {v.rule.id for v in p.refusals} >= {"tpp.world_size", "tpp.num_gpus_dit", "tpp.dit_fsdp", "ulysses_size"}
    assert "FSDP root unshard" in p.explanation() and "RTX 4090" in p.explanation()


@pytest.mark.parametrize("spec", ["5xL40S", "5xA6000"])
def test_upstream_tpp_bf16_does_not_fit_48_gb_cards(spec):
    assert prediction(spec, "tpp", fp8=False).verdict == "wont-fit"


@pytest.mark.parametrize("spec", ["5xH100", "5xH800", "5xA100-80GB", "5xH200"])
def test_upstream_tpp_bf16_fits_80_gb_cards(spec):
    assert prediction(spec, "tpp", fp8=False).verdict == "fits"


def test_upstream_tpp_fp8_fits_a_48_gb_ada_card():
    p = prediction("5xL40S", "tpp")  # the scripts pass --fp8
    assert p.config.fp8 and p.verdict == "fits"


def test_fp8_on_an_a100_is_a_failed_check():
    r = gpu.check_fp8.run(make_ctx("5xA100-80GB", mode="tpp"))
    assert r.status is Status.FAIL and "cc 8.0" in r.summary


def test_upstream_single_gpu_fits_80_gb_not_48():
    assert prediction("1xH100", "single").verdict == "fits"
    assert prediction("1xA100-80GB", "single", fp8=False).verdict == "fits"
    assert prediction("1xL40S", "single").verdict == "wont-fit"


def test_planner_finds_that_kv_offload_with_fp8_fits_48_gb():
    m = catalogue_machine("1xL40S")
    plan = make_plan(resolve_config(1, "single"), m.gpus, SUMMARY, DEFAULT_TERMS)
    assert plan.chosen.offload_kv_cache and plan.chosen.fp8 and plan.prediction.verdict == "fits"
    assert plan.reasons[-1] == "chose single 720*400, 48 frames, fp8, offload KV cache"
    change = smallest_change(resolve_config(1, "single"), m.gpus, SUMMARY, DEFAULT_TERMS)
    assert change.flags == "--offload-kv-cache"


@pytest.mark.parametrize("spec", ["5x4090", "5x3090", "1x4090", "1x3090"])
@pytest.mark.parametrize("mode", ["tpp", "single"])
def test_no_upstream_mode_fits_24_gb_cards_and_the_bf16_load_is_named(spec, mode):
    count = int(spec[0])
    if mode == "tpp" and count < 5:
        return
    p = prediction(spec, mode)
    assert p.verdict == "wont-fit"
    assert "the bf16 load alone is" in p.explanation()
    assert p.binding.binding_phase == "load"


def test_nothing_upstream_accepts_fits_24_gb_cards():
    plan = make_plan(resolve_config(5), catalogue_machine("5x4090").gpus, SUMMARY, DEFAULT_TERMS)
    assert plan.chosen is None and plan.reasons[-1] == "nothing upstream accepts fits this machine"
    assert all("WON'T FIT" in r for r in plan.reasons[:-1])


# ---- the model's exact parts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, image, expected",
    [
        ("720*400", (400, 720), (384, 704)),
        ("704*384", (400, 720), (384, 704)),
        ("688*368", (400, 720), (384, 640)),
        ("384*256", (400, 720), (256, 384)),
        ("720*400", None, (384, 704)),
    ],
)
def test_padded_size_follows_upstream(size, image, expected):
    assert padded_size(size, image) == expected


def test_kv_and_conditioning_caches_from_the_tensor_shapes():
    tpp = prediction("5xH800", "tpp").gpus[0].phases["denoise"]
    assert round(gib(tpp["kv_cache"]), 2) == 9.67 and round(gib(tpp["cond_cache"]), 2) == 2.29
    single = prediction("1xH200", "single").gpus[0].phases["denoise"]
    assert round(gib(single["kv_cache"]), 2) == round(4 * 9.668, 2) and round(gib(single["cond_cache"]), 2) == 2.14
    offloaded = prediction("1xH200", "single", offload_kv_cache=True).gpus[0].phases["denoise"]
    assert round(gib(offloaded["kv_cache"]), 2) == 9.67


def test_fp8_converts_the_linear_layers_but_upstreams_ignore_list_after_a_bf16_load():
    """entry:484-494: every nn.Linear but text_embedding, time_embedding, time_projection, head.head and the
    audio encoder's final linear; trainable_cond_mask is an nn.Embedding."""
    p = prediction("5xH800", "tpp").gpus[0]
    assert round(gib(p.phases["load"]["weights"]), 2) == 30.35
    assert round(gib(p.phases["denoise"]["weights"]), 2) == 15.51  # all 2-D weights halved would be 15.27
    assert SUMMARY.dit_shape.largest_fp8_layer == 13824 * 5120  # ffn.0: the conversion's temporary, x3 bytes
    assert round(gib(p.phases["fp8"]["weights"] - p.phases["load"]["weights"]), 3) == 0.198


def test_without_fp8_hardware_the_fit_is_judged_in_bf16():
    """5xA6000 with --fp8: gpu.fp8 fails, and the memory must be the bf16 launch's: WON'T FIT, not FITS."""
    p = prediction("5xA6000", "tpp", fp8=True)
    assert p.verdict == "wont-fit" and round(gib(p.gpus[0].phases["denoise"]["weights"]), 2) == 30.35


def test_lora_adapters_are_held_in_fp32_before_the_merge():
    """448 target modules (q, k, v, o, ffn.0, ffn.2; the audio injector's too), rank 128: 676,331,520 parameters."""
    assert SUMMARY.dit_shape.lora_params == 676_331_520
    p = prediction("5xH800", "tpp").gpus[4]
    lora = p.phases["lora"]["lora"]
    assert lora == 676_331_520 * 4 + 13824 * 5120 * 6  # the adapters, then one layer's fp32 delta and its bf16 sum
    assert round(gib(lora), 2) == 2.92
    assert "lora" not in prediction("5xH800", "tpp", lora_path="").gpus[0].phases


def test_lora_size_comes_from_the_lora_files_header_when_it_is_there(tmp_path):
    from avatardoctor.ckpt.safetensors_file import write_safetensors

    write_safetensors(
        tmp_path / "lora.safetensors",
        [
            ("blocks.0.self_attn.q.lora_A.weight", "BF16", (128, 5120)),
            ("blocks.0.self_attn.q.lora_B.weight", "BF16", (5120, 128)),
        ],
        lambda n: bytes(n),
    )
    p = prediction("5xH800", "tpp", lora_path=str(tmp_path / "lora.safetensors")).gpus[0]
    assert p.phases["lora"]["lora"] == 2 * 128 * 5120 * 4 + 13824 * 5120 * 6


def test_the_vae_is_held_in_bf16():
    assert round(gib(prediction("5xH800", "tpp").gpus[4].phases["decode"]["vae"]), 3) == round(
        gib(SUMMARY.vae.params * 2), 3
    )
    assert SUMMARY.vae.bytes == 2 * SUMMARY.vae.params * 2  # the file is fp32


def test_audio_features_stay_on_every_rank_and_grow_with_the_audio():
    """25 layers x 1024 x 25 fps x bf16 = 1.22 MiB per second of audio, from the audio encoding to the end."""
    hour = prediction("5xH800", "tpp", audio_seconds=3600)
    for g in hour.gpus:
        assert round(g.phases["text"]["audio_features"] / 2**20 / 3600, 2) == 1.22
        assert g.phases["audio"]["audio_features"] > g.phases["text"]["audio_features"]  # wav2vec2 on the GPU
    assert round(gib(hour.gpus[0].phases["denoise"]["audio_features"]), 2) == 4.29
    assert "audio_features" in hour.to_dict()["gpus"][0]["components"] and hour.to_dict()["audio_seconds"] == 3600
    assert any("no --audio" in n for n in prediction("5xH800", "tpp").notes)


def test_audio_length_is_read_from_the_audio_header(tmp_path):
    import numpy as np
    import soundfile

    soundfile.write(tmp_path / "speech.wav", np.zeros(16000 * 3, dtype="float32"), 16000)
    p = prediction("5xH800", "tpp", audio=tmp_path / "speech.wav")
    assert p.inputs.audio_seconds == 3.0


def test_single_gpu_phases_as_upstream_allocates_them():
    """Text: nothing offloaded yet (DiT and VAE on the GPU with T5). Denoise: 4 KV caches whatever the steps,
    T5 and VAE on the CPU. Final decode: the DiT and the shared conditioning cache stay (single.py:1151-1152)."""
    g = prediction("1xH200", "single", sample_steps=2).gpus[0]
    assert g.phases["text"]["weights"] > 0 and g.phases["text"]["vae"] > 0 and g.phases["text"]["t5"] > 0
    assert round(gib(g.phases["denoise"]["kv_cache"]), 2) == round(4 * 9.668, 2)
    assert g.phases["denoise"]["t5"] == 0 and g.phases["denoise"]["vae"] == 0
    assert g.phases["decode"]["weights"] > 0 and round(gib(g.phases["decode"]["cond_cache"]), 2) == 2.14
    assert "kv_cache" not in g.phases["decode"]


def test_tpp_offload_model_keeps_the_vae_ranks_dit_until_the_loop():
    """Every rank loads, merges and converts its full DiT; --offload_model moves the VAE rank's copy out only
    inside the generation loop (tpp.py:1104-1109)."""
    vae = prediction("5xH800", "tpp", offload_model=True).gpus[4]
    assert vae.phases["load"]["weights"] == SUMMARY.dit.bytes and vae.phases["text"]["weights"] > 0
    assert vae.phases["decode"]["weights"] == 0


def test_attention_concatenates_the_whole_kv_and_cond_cache_per_layer():
    g = prediction("5xH800", "tpp").gpus[0]
    concat = 2 * (12 * 1056 + 3000) * 5120 * 2
    assert g.phases["denoise"]["activations"] == pytest.approx(
        DEFAULT_TERMS.activation_bytes_per_token_dim * 3 * 1056 * 5120 + concat
    )


def test_the_image_aspect_sets_the_geometry(tmp_path):
    from PIL import Image

    portrait = tmp_path / "face.png"
    Image.new("RGB", (400, 720)).save(portrait)
    p = prediction("5xH800", "tpp", image=portrait)
    assert (p.geometry.height, p.geometry.width) == (704, 384)


def test_a_checkpoints_own_sizes_drive_the_prediction(full_skeleton):
    ctx = make_ctx("5xH800-healthy", ckpt_dir=str(full_skeleton))
    from dataclasses import replace

    from avatardoctor.ckpt.scan import scan_checkpoint

    ctx = replace(ctx, checkpoint=scan_checkpoint(str(full_skeleton), Path("/")))
    assert ctx.prediction.sizes_source == f"checkpoint {full_skeleton}"


def test_usable_is_free_memory_minus_fragmentation_and_other_processes_count():
    busy = make_ctx("5xH800-gpu2-busy").prediction.gpus[2]
    idle = make_ctx("5xH800-healthy").prediction.gpus[2]
    assert round(gib(idle.usable_bytes - busy.usable_bytes)) == 29  # the foreign 29.3 GiB is not usable


# ---- the fit checks --------------------------------------------------------------------------------------


def test_fit_peak_fails_with_the_nearest_hardware_when_no_flag_helps():
    r = fit.check_peak.run(make_ctx("5x4090-pcie"))
    assert r.status is Status.FAIL and r.summary.startswith("WON'T FIT: GPU 0 (DiT rank 0): the bf16 load alone is")
    assert "fits 5xL40S" in r.remedy
    assert r.data["prediction"]["verdict"] == "wont-fit"


def test_fit_peak_suggests_the_smallest_change():
    r = fit.check_peak.run(make_ctx("5xL40S", mode="tpp", fp8=False))
    assert r.status is Status.FAIL and r.remedy.startswith("--fp8 (then GPU")


def test_fit_peak_passes_on_h800():
    r = fit.check_peak.run(make_ctx("5xH800-healthy"))
    assert r.status is Status.PASS and r.remedy is None and r.summary.startswith("FITS: ")


def test_fit_estimates_says_default_or_calibrated():
    assert fit.check_estimates.run(make_ctx("5xH800-healthy")).status is Status.SKIP


# ---- the planner on the catalogue --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, chosen",
    [
        ("5xH800", "chose tpp 720*400, 48 frames, fp8"),  # the scripts' --fp8 wherever every GPU has it
        ("8xH100", "chose tpp 720*400, 48 frames, fp8"),
        ("5xL40S", "chose tpp 720*400, 48 frames, fp8"),
        ("1xH100", "chose single 720*400, 48 frames, fp8"),
        ("1xL40S", "chose single 720*400, 48 frames, fp8, offload KV cache"),
        ("1xA6000", "chose single 720*400, 48 frames, bf16, offload KV cache"),  # no fp8 on cc 8.6
        ("4xA100-80GB", "chose single 720*400, 48 frames, bf16"),  # TPP needs five
        ("5xA100-40GB", "chose tpp 384*256, 48 frames, bf16, T5 on CPU"),  # 12 frames would hang TPP at clip 2
    ],
)
def test_planner_choices_on_catalogue_machines(spec, chosen):
    m = catalogue_machine(spec)
    assert make_plan(resolve_config(len(m.gpus)), m.gpus, SUMMARY, DEFAULT_TERMS).reasons[-1] == chosen


def test_planner_says_why_an_explicit_fp8_is_dropped():
    m = catalogue_machine("5xA100-80GB")
    plan = make_plan(resolve_config(5, fp8=True), m.gpus, SUMMARY, DEFAULT_TERMS)
    assert not plan.chosen.fp8 and plan.reasons[0].startswith("your --fp8 cannot run on GPU 0 (cc 8.0)")


def test_planner_honours_an_explicit_no_fp8():
    m = catalogue_machine("5xH800")
    plan = make_plan(resolve_config(5, fp8=False), m.gpus, SUMMARY, DEFAULT_TERMS)
    assert plan.reasons[-1] == "chose tpp 720*400, 48 frames, bf16" and not plan.chosen.fp8


def test_planner_passes_the_readmes_local_lora_file_not_the_hub_id(tmp_path):
    (tmp_path / "ckpt/LiveAvatar").mkdir(parents=True)
    (tmp_path / "ckpt/LiveAvatar/liveavatar.safetensors").write_bytes(b"x")
    m = catalogue_machine("5xH800")
    chosen = make_plan(resolve_config(5, liveavatar=tmp_path), m.gpus, SUMMARY, DEFAULT_TERMS).chosen
    assert chosen.lora_path == "ckpt/LiveAvatar/liveavatar.safetensors"
    reasons = make_plan(resolve_config(5, liveavatar=tmp_path), m.gpus, SUMMARY, DEFAULT_TERMS).reasons
    assert reasons[0].startswith("passing the README's local LoRA file")
    named = make_plan(
        resolve_config(5, liveavatar=tmp_path, lora_path="Quark-Vision/Live-Avatar"), m.gpus, SUMMARY, DEFAULT_TERMS
    )
    assert named.chosen.lora_path == "Quark-Vision/Live-Avatar"  # the user's own choice stands


def test_hardware_advice_is_cheapest_first_and_drops_fp8_where_impossible():
    options = hardware_advice(resolve_config(5, "tpp"), SUMMARY, DEFAULT_TERMS)
    assert [(o.spec, o.fp8_dropped) for o in options] == [("5xL40S", False), ("5xA100-80GB", True), ("5xH100", False)]


def test_entry_argv_is_a_list_as_the_upstream_script_passes_it():
    argv = entry_argv(resolve_config(5, "tpp", ckpt_dir="ckpt/Wan2.2-S2V-14B/", prompt='say "hi"; $(rm -rf /)'))
    assert argv[argv.index("--size") + 1] == "720*400" and "--enable_vae_parallel" in argv and "--fp8" in argv
    assert argv[argv.index("--num_gpus_dit") + 1] == "4" and argv[-1] == 'say "hi"; $(rm -rf /)'
    single = entry_argv(resolve_config(1, "single", offload_kv_cache=True))
    assert "--single_gpu" in single and "--offload_kv_cache" in single and "--enable_vae_parallel" not in single


# ---- the commands ------------------------------------------------------------------------------------------


def cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "avatardoctor", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_predict_json_and_exit_codes():
    r = cli("predict", "--machine", "4x4090", "--mode", "seed-4gpu", "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert doc["schema"] == "avatardoctor.predict/1" and doc["prediction"]["verdict"] == "wont-run"
    assert (
        doc["prediction"]["memory_verdict"] == "wont-fit" and doc["hardware_advice"] == []
    )  # no box runs what upstream refuses
    assert "tpp.world_size" in {r["rule"] for r in doc["prediction"]["refused_by"]}
    g = doc["prediction"]["gpus"][0]
    assert abs(g["loaded_gib"] - 21.48) <= 0.5 and g["components"]["root_unshard"] == pytest.approx(4.172, abs=0.01)
    ok = cli("predict", "--machine", "5xH800", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["prediction"]["verdict"] == "fits"


def test_predict_gpus_picks_the_devices():
    r = cli(
        "predict",
        "--machine",
        "tests/fixtures/machines/5xH800-gpu2-busy.json",
        "--gpus",
        "0,1,3,4",
        "--mode",
        "single",
        "--json",
    )
    assert [g["index"] for g in json.loads(r.stdout)["prediction"]["gpus"]] == [0]
    r = cli("predict", "--machine", "8xH100", "--gpus", "7,6,5,4,3", "--json")
    assert [g["index"] for g in json.loads(r.stdout)["prediction"]["gpus"]] == [7, 6, 5, 4, 3]


def test_plan_writes_a_plan_with_a_free_port(tmp_path):
    out = tmp_path / "plan.json"
    with socket.socket() as held:
        try:
            held.bind(("0.0.0.0", 29102))  # the tpp script's port, taken by another job
            held.listen()
        except OSError as err:  # already held by another process on this machine: taken all the same
            assert err.errno == errno.EADDRINUSE, err
        r = cli("plan", "--machine", "5xH800", "--prompt", "a $(quoted) prompt", "-o", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["schema"] == "avatardoctor.plan/1" and doc["mode"] == "tpp" and doc["nproc"] == 5
    assert doc["master_port"] != 29102 and isinstance(doc["argv"], list)
    assert doc["argv"][-2:] == ["--prompt", "a $(quoted) prompt"]
    assert doc["env"]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4" and doc["env"]["NCCL_DEBUG"] == "WARN"
    assert doc["prediction"]["verdict"] == "fits" and doc["reasons"][-1].startswith("chose tpp")
    again = cli("plan", "--machine", "5xH800", "-o", str(out))
    assert again.returncode == 2 and "exists" in again.stderr


def test_plan_when_nothing_fits_exits_1_naming_hardware():
    r = cli("plan", "--machine", "5x4090", "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert "argv" not in doc and doc["reasons"][-1] == "nothing upstream accepts fits this machine"
    assert doc["hardware_advice"][0] == "5xL40S"


def test_calibrated_terms_reach_the_prediction(tmp_path):
    measurements = {
        "schema": "avatardoctor.measurements/1",
        "measurements": [
            {
                "run_id": f"run{i}",
                "gpu_name": "NVIDIA H800",
                "role": "dit",
                "phase": "denoise",
                "measured_bytes": int(50 * GIB + i * 2**28),
                "exact_bytes": int(48 * GIB),
                "processes": 5,
                "nccl_peers": 4,
                "token_dims": 3168 * 5120 * (1 + i),
                "decode_pixels": 0,
                "recorded_at": "2026-11-20T10:00:00+00:00",
            }
            for i in range(4)
        ],
    }
    (tmp_path / "m.json").write_text(json.dumps(measurements))
    env = {**os.environ, "AVATARDOCTOR_HOME": str(tmp_path / "home")}
    assert cli("calibrate", "--import", str(tmp_path / "m.json"), env=env).returncode == 0
    doc = json.loads(cli("check", "--machine", "5xH800", "--json", env=env).stdout)
    estimates = next(c for c in doc["checks"] if c["id"] == "fit.estimates")
    assert estimates["status"] == "pass" and estimates["summary"] == "estimated terms calibrated from 4 runs"
    peak = next(c for c in doc["checks"] if c["id"] == "fit.peak")
    assert any("estimates calibrated from 4 runs" in d for d in peak["details"])


def test_plan_makes_input_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = entry_argv(resolve_config(1, "single", image=Path("face.png"), audio=Path("speech.wav")))
    assert argv[argv.index("--image") + 1] == str(tmp_path / "face.png")
    assert argv[argv.index("--audio") + 1] == str(tmp_path / "speech.wav")


def test_plan_checks_the_inputs_it_will_pass(tmp_path):
    missing = tmp_path / "speech.wav"
    r = cli("plan", "--machine", "5xH800", "--audio", str(missing), "--prompt", "hi", "--json")
    doc = json.loads(r.stdout)
    by_id = {c["id"]: c for c in doc["input_checks"]}
    assert by_id["input.audio"]["status"] == "fail" and by_id["input.prompt"]["status"] == "warn"


def test_fit_peak_never_says_fits_for_what_upstream_stops():
    """Memory alone fits 5xH800 at 480*832, but the conditioning cache overflows after the load."""
    r = fit.check_peak.run(make_ctx("5xH800-healthy", mode="tpp", size="480*832"))
    assert r.status is Status.FAIL and r.summary.startswith("WON'T RUN: upstream's code stops this launch (cond_cache")
    assert "memory alone: FITS" in r.summary
    assert r.remedy == "--size 704*384 (the largest that fits for an image of the --size aspect) (see la.asserts)"


def test_eager_pytorch_holds_about_twice_the_live_activations():
    compiled = prediction("5xH800", "tpp").gpus[0].phases["denoise"]["activations"]
    eager = prediction("5xH800", "tpp", compile=False).gpus[0].phases["denoise"]["activations"]
    concat = 2 * (12 * 1056 + 3000) * 5120 * 2
    assert eager - concat == pytest.approx(2 * (compiled - concat))


def test_nvml_sees_what_the_allocator_reserved_earlier():
    """No empty_cache() after the LoRA merge or the fp8 conversion: NVML shows the most allocated so far."""
    g = prediction("5xH800", "tpp").gpus[0]
    assert g.reserved("text") == g.total("lora") > g.total("text")
    assert g.to_dict()["phases_reserved_gib"]["denoise"] == round(g.total("denoise") / GIB, 3)


# ---- the user's flags are constraints (issue: the plan is a contract) ---------------------------------


def test_plan_keeps_every_flag_the_user_set():
    m = catalogue_machine("5xH800")
    base = resolve_config(5, size="384*256", infer_frames=24, fp8=True, t5_cpu=True, master_port=29999)
    plan = make_plan(base, m.gpus, SUMMARY, DEFAULT_TERMS)
    c = plan.chosen
    assert (c.size, c.infer_frames, c.fp8, c.t5_cpu, c.master_port) == ("384*256", 24, True, True, 29999)
    assert list(plan.reasons[:5]) == [
        "kept your --size 384*256",
        "kept your --infer-frames 24",
        "kept your --fp8",
        "kept your --t5-cpu",
        "kept your --master-port 29999",
    ]


def test_plan_keeps_an_explicit_mode():
    m = catalogue_machine("5xH800")
    plan = make_plan(resolve_config(5, "single"), m.gpus, SUMMARY, DEFAULT_TERMS)
    assert plan.chosen.mode == "single" and plan.reasons[0] == "kept your --mode single"


def test_plan_says_which_fallback_it_added_and_what_it_fixes():
    m = catalogue_machine("1xL40S")
    plan = make_plan(resolve_config(1), m.gpus, SUMMARY, DEFAULT_TERMS)
    assert plan.chosen.offload_kv_cache
    added = [r for r in plan.reasons if r.startswith("added --offload-kv-cache")]
    assert added and "GPU 0 short by" in added[0]


def test_plan_names_the_flag_that_blocks_a_fit_and_what_would_fit_without_it():
    m = catalogue_machine("1xL40S")
    base = resolve_config(1, offload_kv_cache=False, infer_frames=48, size="720*400")
    plan = make_plan(base, m.gpus, SUMMARY, DEFAULT_TERMS)
    assert plan.chosen is None
    blocking = [r for r in plan.reasons if " blocks it: without it, chose " in r]
    assert any(
        r.startswith("your --no-offload-kv-cache blocks it: without it, chose single 720*400, 48 frames")
        for r in blocking
    )
    assert any(r.startswith("your --size 720*400 blocks it") for r in blocking)
    assert plan.reasons[-1] == "nothing upstream accepts fits this machine within your flags"


def test_plan_says_when_upstream_refuses_what_the_flags_ask():
    m = catalogue_machine("5xH800")
    plan = make_plan(resolve_config(5, size="1280*720"), m.gpus, SUMMARY, DEFAULT_TERMS)
    assert plan.chosen is None and any("upstream refuses what your flags ask (cond_cache)" in r for r in plan.reasons)
    assert any(r.startswith("your --size 1280*720 blocks it: without it, chose tpp 720*400") for r in plan.reasons)


def test_the_input_headers_are_read_once_per_file_version(tmp_path, monkeypatch):
    """check, the planner and the what-ifs predict dozens of times: the image is opened once, and again
    only when the file changes."""
    from PIL import Image

    path = tmp_path / "face.png"
    Image.new("RGB", (640, 480)).save(path)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda p, *a, **k: opened.append(p) or real_open(p, *a, **k))
    for _ in range(5):
        prediction("5xH800", "tpp", image=path)
    assert len(opened) == 1
    Image.new("RGB", (480, 640)).save(path)
    os.utime(path, ns=(1, 1))  # a new version, whatever the clock's resolution
    assert prediction("5xH800", "tpp", image=path).geometry.height > prediction("5xH800", "tpp").geometry.height
    assert len(opened) == 2


def test_many_flags_that_cannot_fit_are_explained_one_at_a_time(monkeypatch):
    """Each flag is dropped alone to say which one blocks the fit: never every combination of them."""
    import avatardoctor.planner as planner

    calls = []
    real = planner.make_plan
    monkeypatch.setattr(planner, "make_plan", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = catalogue_machine("1x4090")
    base = resolve_config(
        1,
        size="720*400",
        infer_frames=48,
        t5_cpu=False,
        offload_kv_cache=False,
        fp8=False,
        sample_steps=4,
        master_port=29999,
    )
    plan = real(base, m.gpus, SUMMARY, DEFAULT_TERMS)
    assert plan.chosen is None and len(calls) == 7  # one plan per flag, none of them explaining further
