"""input.audio, input.audio.silence, input.audio.clips against real files written at run time.

Every file is synthesised here with soundfile and numpy (tones, silences, several rates, channel
counts and formats) or is a real broken file (empty, text, a cut header), so the checks decode
exactly what a user's file would give them.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import make_ctx

from avatardoctor.checks import audio
from avatardoctor.checks.base import Status
from avatardoctor.upstream import clips_for_audio

TONE_AMPLITUDE = 0.3  # about -13 dBFS RMS: speech-like loudness


def tone(seconds: float, rate: int, amplitude: float = TONE_AMPLITUDE, channels: int = 1) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    wave = (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return np.repeat(wave[:, None], channels, axis=1)


def silence(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    return np.zeros((round(seconds * rate), channels), dtype=np.float32)


def write(path: Path, rate: int, *parts: np.ndarray, **kwargs) -> Path:
    soundfile.write(path, np.concatenate(parts), rate, **kwargs)
    return path


def run(check, tmp_path: Path, audio_path: Path | str | None, **config):
    return check.run(make_ctx("5xH800-healthy", cwd=tmp_path, audio=Path(audio_path) if audio_path else None, **config))


def test_checks_in_display_order():
    assert [c.id for c in audio.CHECKS] == ["input.audio", "input.audio.silence", "input.audio.clips"]
    assert {c.group for c in audio.CHECKS} == {"Inputs"}


def test_soundfile_is_imported_only_when_an_audio_is_checked():
    code = "import sys, avatardoctor.checks.audio; print('soundfile' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


@pytest.mark.parametrize("check", audio.CHECKS, ids=lambda c: c.id)
def test_every_check_skips_without_audio(check, tmp_path):
    result = run(check, tmp_path, None)
    assert (result.status, result.summary) == (Status.SKIP, "no --audio given")


@pytest.mark.parametrize(
    "name, kwargs, fmt, subtype",
    [("speech.wav", {}, "WAV", "PCM_16"), ("speech.flac", {}, "FLAC", "PCM_16"), ("speech.ogg", {}, "OGG", "VORBIS")],
)
def test_decodable_formats_pass_with_their_facts(tmp_path, name, kwargs, fmt, subtype):
    write(tmp_path / name, 16000, tone(2.5, 16000), **kwargs)
    result = run(audio.check_audio, tmp_path, name)
    assert result.status is Status.PASS, result.summary
    assert result.summary == f"{name}: {fmt} ({subtype}), 16000 Hz, mono, 2.5 s"
    assert (result.data["format"], result.data["samplerate"], result.data["channels"]) == (fmt, 16000, 1)
    assert result.data["duration_s"] == pytest.approx(2.5)


@pytest.mark.parametrize("check", audio.CHECKS, ids=lambda c: c.id)
def test_results_are_plain_json(check, tmp_path):
    write(tmp_path / "speech.wav", 16000, silence(1.0, 16000), tone(2.0, 16000))
    result = run(check, tmp_path, "speech.wav")
    assert json.loads(json.dumps(result.to_dict()))["data"] == pytest.approx(dict(result.data))


def test_stereo_44k_passes_and_says_the_loader_mixes_and_resamples(tmp_path):
    write(tmp_path / "stereo.wav", 44100, tone(1.0, 44100, channels=2))
    result = run(audio.check_audio, tmp_path, "stereo.wav")
    assert result.status is Status.PASS
    assert result.data["channels"] == 2
    assert any("converted to mono by the loader" in d for d in result.details)
    assert any("resampled from 44100 Hz to 16 kHz" in d for d in result.details)


def m4a_header(path: Path) -> None:
    path.write_bytes(b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00M4A mp42isom" + bytes(2000))


def cut_header(path: Path) -> None:
    write(path, 16000, tone(1.0, 16000))
    path.write_bytes(path.read_bytes()[:20])  # RIFF, WAVE and half the 'fmt ' chunk


@pytest.mark.parametrize(
    "name, make, words",
    [
        ("missing.wav", lambda p: None, "audio file not found: missing.wav"),
        ("folder.wav", lambda p: p.mkdir(), "--audio folder.wav is a directory"),
        ("empty.wav", lambda p: p.touch(), "empty.wav is empty (0 bytes)"),
        (
            "notes.wav",
            lambda p: p.write_text("these are my notes, not audio\n" * 20),
            "cannot decode notes.wav: Format not recognised",
        ),
        ("cut.wav", cut_header, "cannot decode cut.wav: Error in WAV"),
        ("header-only.wav", lambda p: write(p, 16000, silence(0, 16000)), "header-only.wav holds no audio (0 samples)"),
        ("voice.m4a", m4a_header, "cannot decode voice.m4a"),
        ("a+b.wav", lambda p: write(p, 16000, tone(1.0, 16000)), "contains '+'"),
    ],
)
def test_bad_inputs_fail_in_one_line_and_the_other_checks_skip(tmp_path, name, make, words):
    make(tmp_path / name)
    result = run(audio.check_audio, tmp_path, name)
    assert result.status is Status.FAIL
    assert words in result.summary and "\n" not in result.summary
    assert not result.data.get("crashed") and result.remedy
    for dependent in (audio.check_silence, audio.check_clips):
        assert run(dependent, tmp_path, name).summary == f"input.audio failed: {result.summary}"


def test_a_name_that_is_not_utf8_fails_and_prints(tmp_path):
    name = os.fsdecode(b"bad\xff.wav")
    os.rename(
        write(tmp_path / "good.wav", 16000, tone(1.0, 16000)), tmp_path / name
    )  # soundfile cannot write that name
    result = run(audio.check_audio, tmp_path, name)
    assert result.status is Status.FAIL
    assert "bad\\xff.wav is not valid UTF-8" in result.summary
    result.summary.encode("utf-8")  # printable: no surrogates reach the renderers


def test_below_16k_warns_with_a_quoted_ffmpeg_command(tmp_path):
    write(tmp_path / "my call.wav", 8000, tone(2.0, 8000))
    result = run(audio.check_audio, tmp_path, "my call.wav")
    assert result.status is Status.WARN
    assert "8000 Hz is below the 16 kHz" in result.summary
    assert "`ffmpeg -i 'my call.wav' -ar 16000 -ac 1 'my call-16k.wav'`" in result.remedy
    assert run(audio.check_audio, tmp_path, write(tmp_path / "ok.wav", 16000, tone(2.0, 16000))).status is Status.PASS


def id3v2_tag(title: bytes) -> bytes:
    """A minimal valid ID3v2.3 tag: a header (size syncsafe) and one TIT2 text frame."""
    frame = b"TIT2" + (len(title) + 1).to_bytes(4, "big") + b"\x00\x00" + b"\x00" + title
    size = len(frame)
    syncsafe = bytes((size >> shift) & 0x7F for shift in (21, 14, 7, 0))
    return b"ID3\x03\x00\x00" + syncsafe + frame


@pytest.mark.skipif("MP3" not in soundfile.available_formats(), reason="this libsndfile cannot write MP3")
def test_mp3_with_id3_tag_warns_and_one_without_passes(tmp_path):
    plain = write(tmp_path / "plain.mp3", 16000, tone(2.0, 16000), format="MP3")
    (tmp_path / "tagged.mp3").write_bytes(id3v2_tag(b"My speech") + plain.read_bytes())
    assert run(audio.check_audio, tmp_path, "plain.mp3").status is Status.PASS
    result = run(audio.check_audio, tmp_path, "tagged.mp3")
    assert result.status is Status.WARN and "ID3" in result.summary
    assert "`ffmpeg -i tagged.mp3 -map_metadata -1 -ar 16000 -ac 1 tagged-16k.wav`" in result.remedy


@pytest.mark.parametrize("rate, channels, name", [(16000, 1, "speech.wav"), (44100, 2, "speech.flac")])
def test_long_silence_at_both_ends_warns_with_the_measured_trim(tmp_path, rate, channels, name):
    write(
        tmp_path / name,
        rate,
        silence(1.2, rate, channels),
        tone(3.0, rate, channels=channels),
        silence(0.8, rate, channels),
    )
    result = run(audio.check_silence, tmp_path, name)
    assert result.status is Status.WARN
    assert result.data["lead_s"] == pytest.approx(1.2, abs=0.05)
    assert result.data["trail_s"] == pytest.approx(0.8, abs=0.05)
    stem = name.split(".")[0]
    assert f"`ffmpeg -i {name} -ss 1.10 -to 4.30 {stem}-trimmed.wav`" in result.remedy


def test_short_silence_at_the_ends_passes(tmp_path):
    write(tmp_path / "speech.wav", 16000, silence(0.3, 16000), tone(2.0, 16000), silence(0.4, 16000))
    result = run(audio.check_silence, tmp_path, "speech.wav")
    assert result.status is Status.PASS, result.summary
    assert (result.data["lead_s"], result.data["trail_s"]) == (
        pytest.approx(0.3, abs=0.05),
        pytest.approx(0.4, abs=0.05),
    )


def test_low_peak_warns_with_loudnorm(tmp_path):
    write(tmp_path / "far.wav", 16000, tone(2.0, 16000, amplitude=0.02))  # peak -34 dBFS, RMS -37 dBFS
    result = run(audio.check_silence, tmp_path, "far.wav")
    assert result.status is Status.WARN and "quiet" in result.summary
    assert result.data["peak_dbfs"] == pytest.approx(-34, abs=0.5)
    assert "`ffmpeg -i far.wav -af loudnorm -ar 16000 far-loud.wav`" in result.remedy


def test_low_rms_warns_even_with_a_loud_click(tmp_path):
    murmur = tone(3.0, 16000, amplitude=0.006)  # RMS -47 dBFS, above the -50 dBFS silence line
    murmur[16000] = 0.5  # one click: the peak alone looks fine
    result = run(audio.check_silence, tmp_path, write(tmp_path / "murmur.wav", 16000, murmur))
    assert result.status is Status.WARN and "quiet" in result.summary
    assert result.data["sound_rms_dbfs"] < audio.QUIET_RMS_DBFS < result.data["peak_dbfs"]


def test_all_silence_warns(tmp_path):
    result = run(audio.check_silence, tmp_path, write(tmp_path / "mute.wav", 16000, silence(2.0, 16000)))
    assert result.status is Status.WARN and "is silent" in result.summary


def write_long(path: Path, rate: int, seconds: int, level_at) -> Path:
    """A long file written a minute at a time (level_at(minute) -> amplitude), 1 s of silence first."""
    with soundfile.SoundFile(path, "w", rate, 1, "PCM_16") as out:
        out.write(silence(1.0, rate))
        for minute in range(seconds // 60):
            out.write(tone(60.0, rate, amplitude=level_at(minute)))
        out.write(silence(2.0, rate))
    return path


def test_a_20_minute_file_is_measured_whole(tmp_path):
    """Read whole, not by windows (its speed is tests/bench/bench_audio.py's)."""
    write_long(tmp_path / "talk.wav", 16000, 20 * 60, lambda minute: TONE_AMPLITUDE)
    result = run(audio.check_silence, tmp_path, "talk.wav")
    assert result.status is Status.WARN and not result.data["windowed"]
    assert (result.data["lead_s"], result.data["trail_s"]) == (
        pytest.approx(1.0, abs=0.05),
        pytest.approx(2.0, abs=0.05),
    )


def test_a_file_over_an_hour_is_read_at_its_ends_only(tmp_path):
    # Quiet in the first and last 5 minutes, loud in between: only a windowed read finds it quiet.
    minutes = 62
    write_long(tmp_path / "stream.wav", 8000, minutes * 60, lambda m: 0.01 if m < 6 or m >= minutes - 6 else 0.5)
    result = run(audio.check_silence, tmp_path, "stream.wav")
    assert result.data["windowed"] and "quiet" in result.summary
    assert any("first and last 300 s" in d for d in result.details)
    assert (result.data["lead_s"], result.data["trail_s"]) == (
        pytest.approx(1.0, abs=0.05),
        pytest.approx(2.0, abs=0.05),
    )


@pytest.mark.parametrize(
    "seconds, infer_frames, num_clip, clips, video_s",
    [
        (12.3, 48, 10000, 7, 13.44),
        (1.92, 48, 10000, 1, 1.92),  # exactly one clip
        (71.04, 48, 10000, 37, 71.04),  # exactly 37 clips, where float arithmetic makes 38
        (1.93, 48, 10000, 1, 1.92),  # 96 wav2vec2 frames -> 57 features, under one clip's 57.6: upstream makes one
        (1.96, 48, 10000, 2, 3.84),  # 97 frames -> 58 features: the second clip
        (10.0, 80, 10000, 4, 12.8),
        (60.0, 48, 5, 5, 9.6),  # --num_clip cuts the audio
    ],
)
def test_clip_arithmetic(tmp_path, seconds, infer_frames, num_clip, clips, video_s):
    write(tmp_path / "speech.wav", 16000, tone(seconds, 16000))
    result = run(audio.check_clips, tmp_path, "speech.wav", infer_frames=infer_frames, num_clip=num_clip)
    assert result.status is Status.PASS
    assert (result.data["clips"], result.data["video_s"]) == (clips, pytest.approx(video_s))
    assert any("as upstream computes it" in d for d in result.details)
    assert ("cuts the audio" in result.summary) == (num_clip < result.data["audio_clips"])


def test_clip_summary_reads_as_the_brief_says(tmp_path):
    write(tmp_path / "speech.wav", 16000, tone(12.3, 16000))
    result = run(audio.check_clips, tmp_path, "speech.wav")
    assert result.summary == "12.3 s of audio -> 7 clips of 48 frames, about 13.4 s of video"


def test_audio_shorter_than_one_clip_warns(tmp_path):
    write(tmp_path / "hi.wav", 16000, tone(0.5, 16000))
    result = run(audio.check_clips, tmp_path, "hi.wav")
    assert result.status is Status.WARN and "shorter than one clip" in result.summary
    assert (result.data["clips"], result.data["video_s"]) == (1, pytest.approx(1.92))


def test_stereo_in_opposite_phase_is_silent_as_the_loader_mixes_it(tmp_path):
    left = tone(2.0, 16000)
    result = run(audio.check_silence, tmp_path, write(tmp_path / "phase.wav", 16000, np.hstack([left, -left])))
    assert result.status is Status.WARN and "is silent" in result.summary


def test_a_fifo_is_refused_without_opening_it(tmp_path):
    from test_ckpt_hashing import writer_releasing_any_reader

    os.mkfifo(tmp_path / "speech.wav")
    with writer_releasing_any_reader(tmp_path / "speech.wav"):
        result = run(audio.check_audio, tmp_path, "speech.wav")
    assert (result.status, result.summary) == (
        Status.FAIL,
        "--audio speech.wav is a FIFO (named pipe), not an audio file",
    )


def sparse_wav(path: Path, rate: int, channels: int, data_bytes: int) -> Path:
    """A 16-bit PCM WAV header claiming `rate`, with data_bytes of sparse (zero) samples behind it."""
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * 2 % 2**32, channels * 2, 16)
    header = (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", data_bytes)
    )
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + data_bytes)
    return path


def test_an_absurd_rate_is_refused_and_nothing_decodes_beyond_the_bounds(tmp_path):
    """A sparse 4 GB WAV claiming 2^31-1 Hz: the probe read alone asked numpy for 8 GiB, the levels 8 more.
    Run under a 3 GiB address-space limit: an unbounded read fails there instead of swapping the machine."""
    sparse_wav(tmp_path / "absurd.wav", 2**31 - 1, 2, 2**32 - 64)
    sparse_wav(tmp_path / "plausible.wav", 768_000, 8, 2**32 - 64)  # 44 min, 5.5 GB decoded
    code = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
sys.path.insert(0, {str(Path(__file__).parent)!r})
from fractions import Fraction
from pathlib import Path
from conftest import make_ctx
from avatardoctor.checks import audio
for name in ("absurd.wav", "plausible.wav"):
    ctx = make_ctx("5xH800-healthy", cwd=Path({str(tmp_path)!r}), audio=Path(name))
    for check in audio.CHECKS:
        r = check.run(ctx)
        print(name, r.id, r.status.value, r.summary, r.data.get("windowed") if r.data else None, sep=" | ")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("absurd.wav | input.audio | fail | absurd.wav: its header claims 2,147,483,647 Hz"), (
        lines
    )
    assert lines[3].startswith("plausible.wav | input.audio | pass"), lines
    assert lines[4].startswith("plausible.wav | input.audio.silence | warn") and lines[4].endswith("| True"), lines


@pytest.mark.parametrize(
    "seconds, infer_frames, clips",
    [
        (Fraction(1776, 25), 48, 37),  # 71.04 s exactly: 3551 wav2vec2 frames -> 2130 features -> 36.98 -> 37
        (71.04, 48, 37),  # the same length given as a float (--audio-seconds)
        (Fraction(30720, 16000), 48, 1),  # 1.92 s: 57 features, one clip holds 57.6
        (Fraction(31360, 16000), 48, 2),  # 1.96 s: 58 features
        (Fraction(0), 48, 1),  # upstream's + 1: never zero clips
    ],
)
def test_clips_for_audio_follows_upstreams_arithmetic(seconds, infer_frames, clips):
    assert clips_for_audio(seconds, infer_frames) == clips


def test_predict_and_the_check_count_the_same_clips(tmp_path):
    """--audio-seconds (predict, the planner) and --audio (this check) reach one count through one function."""
    write(tmp_path / "speech.wav", 16000, tone(71.04, 16000))
    result = run(audio.check_clips, tmp_path, "speech.wav")
    assert result.data["audio_clips"] == clips_for_audio(71.04, 48) == 37
