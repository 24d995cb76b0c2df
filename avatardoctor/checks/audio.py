"""Input checks for the driving audio: can the loader read it, is it trimmed and loud, how many clips.

Upstream reads --audio with `librosa.load(audio_path, sr=16000)` (Wan2.2's s2v AudioEncoder, which
Live Avatar imports): librosa decodes with soundfile (libsndfile), mixes to mono and resamples to
16 kHz, minutes into the launch. avatardoctor decodes with the same soundfile, so what fails here
fails there (librosa's only fallback, audioread, is deprecated). soundfile and numpy are imported
inside the functions: `avatardoctor check` without --audio must start fast.
"""

from __future__ import annotations

import math
import os
import shlex
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

from avatardoctor.checks.base import (
    CheckContext,
    Outcome,
    Status,
    check,
    failed,
    passed,
    skipped,
    warned,
)
from avatardoctor.files import not_regular_file
from avatardoctor.upstream import AUDIO_FEATURE_RATE, AUDIO_LOAD_RATE, VIDEO_FPS, clips_for_audio

GROUP = "Inputs"
NO_AUDIO = "no --audio given"
FRAME_S = 0.02  # loudness is judged per 20 ms frame
SILENCE_DBFS = -50.0  # a frame quieter than this is silence
EDGE_SILENCE_S = 0.5  # the seeds' advice: trim more than 500 ms of silence at either end
KEEP_S = 0.1  # the trim command keeps this much silence around the sound, not to cut a soft onset
QUIET_RMS_DBFS = -40.0  # RMS of the sound (silent frames left out); speech is usually -25..-15
QUIET_PEAK_DBFS = -30.0  # a loudest sample below this means the recording level was far too low
FULL_ANALYSIS_MAX_S = 3600.0  # a longer file: only its first and last EDGE_WINDOW_S are read
EDGE_WINDOW_S = 300.0
FRAMES_PER_BLOCK = 500  # 20 ms frames per soundfile block (10 s): a long file is never read whole
# Decoded float32 bytes, whatever the header claims (a sparse 4 GB WAV "at 2 GHz" asked for 16 GiB):
FULL_ANALYSIS_MAX_BYTES = 2 * 2**30  # more (1 h of 48 kHz stereo is 1.4 GB): only the edge windows are read
EDGE_WINDOW_BYTES = 256 * 2**20  # each edge window at most (300 s of 48 kHz stereo is 115 MB)
BLOCK_BYTES = 16 * 2**20  # one soundfile block at most (at least one 20 ms frame)
PROBE_BYTES = 16 * 2**20  # the decoding probe of input.audio
MAX_SAMPLERATE = 768_000  # Hz: the highest rate audio interfaces record; above it the header is damaged
SAMPLE_BYTES = 4  # float32, as decoded


def shown(path: Path | str) -> str:
    """A printable name: bytes that are not UTF-8 appear as \\xNN instead of breaking the output."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class AudioFile:
    given: Path  # as passed to --audio, and so to the launch
    path: Path  # where that is from the current directory
    format: str
    subtype: str
    samplerate: int
    channels: int
    frames: int

    @property
    def name(self) -> str:
        return shown(self.given)

    @property
    def duration_s(self) -> float:
        return self.frames / self.samplerate

    @property
    def frame_bytes(self) -> int:
        """One decoded sample of every channel."""
        return SAMPLE_BYTES * self.channels


def ffmpeg(given: Path, *options: str, suffix: str) -> str:
    """A runnable ffmpeg command from the --audio file to a WAV beside it, quoted for the shell."""
    return shlex.join(["ffmpeg", "-i", str(given), *options, str(given.with_name(f"{given.stem}-{suffix}.wav"))])


def open_audio(ctx: CheckContext) -> AudioFile | Outcome:
    """The decodable --audio file, or why not: a skip without --audio, else a failure."""
    given = ctx.config.audio
    if given is None:
        return skipped(NO_AUDIO)
    path = ctx.cwd / given  # an absolute `given` replaces cwd
    name, data = shown(given), {"path": shown(path)}
    where = [f"looked at {shown(path)}"]
    if not os.path.exists(path):
        return failed(
            f"audio file not found: {name}", where, "pass --audio an existing WAV, FLAC, OGG or MP3 file", data
        )
    if os.path.isdir(path):
        return failed(
            f"--audio {name} is a directory, not an audio file", where, "pass --audio the audio file itself", data
        )
    if not os.access(path, os.R_OK):
        return failed(f"cannot read {name} (permission denied)", where, f"chmod u+r {shlex.quote(name)}", data)
    if kind := not_regular_file(path):  # only regular files are read: a FIFO blocks the open forever
        return failed(f"--audio {name} is {kind}, not an audio file", where, "pass --audio the audio file itself", data)
    if os.path.getsize(path) == 0:
        return failed(f"{name} is empty (0 bytes)", where, "export or copy the audio again", data)
    try:
        os.fsdecode(path).encode("utf-8")  # soundfile encodes the name strictly: surrogates raise
    except UnicodeEncodeError:
        summary = f"the path {shown(path)} is not valid UTF-8: the audio loader (soundfile) cannot open it"
        return failed(summary, where, "rename the file (or its folder) to a UTF-8 name; plain ASCII is safest", data)
    if "+" in str(given):
        summary = f"--audio {name} contains '+': Live Avatar splits the path there into several speakers' files"
        split = ["both upstream pipelines run audio_path.split('+') (multi-speaker mode, with SAM2 masks)"]
        return failed(summary, split, "rename the file (or its folder) without '+'", data)
    import soundfile

    try:
        with soundfile.SoundFile(str(path)) as sound:
            audio = AudioFile(given, path, sound.format, sound.subtype, sound.samplerate, sound.channels, sound.frames)
            if audio.samplerate > MAX_SAMPLERATE:
                return failed(
                    f"{name}: its header claims {audio.samplerate:,} Hz, above the {MAX_SAMPLERATE:,} Hz any recorder uses: "
                    "a damaged or hand-made header",
                    where,
                    "export the audio again (16 kHz or more, mono is enough)",
                    data,
                )
            probe = min(audio.frames, audio.samplerate, max(1, PROBE_BYTES // audio.frame_bytes))
            sound.read(probe, dtype="float32")  # the header alone proves little
    except soundfile.SoundFileError as err:
        why = getattr(err, "error_string", str(err)).strip().rstrip(".")
        convert = ffmpeg(given, "-ar", "16000", "-ac", "1", suffix="16k")
        return failed(
            f"cannot decode {name}: {why}",
            [*where, f"soundfile (libsndfile {soundfile.__libsndfile_version__}) reads WAV, FLAC, OGG and MP3"],
            f"export it again; if it is audio that libsndfile cannot read (AAC, M4A...), convert it: `{convert}`",
            data,
        )
    if audio.frames == 0:
        return failed(f"{name} holds no audio (0 samples)", where, "export the audio again", data)
    return audio


def needs_audio(ctx: CheckContext) -> AudioFile | Outcome:
    """The audio for the checks that read it; they skip when input.audio failed."""
    audio = open_audio(ctx)
    if isinstance(audio, Outcome) and audio.status is Status.FAIL:
        return skipped(f"input.audio failed: {audio.summary}")
    return audio


@check("input.audio", GROUP)
def check_audio(ctx: CheckContext) -> Outcome:
    audio = open_audio(ctx)
    if isinstance(audio, Outcome):
        return audio
    channels = "mono" if audio.channels == 1 else f"{audio.channels} channels"
    summary = (
        f"{audio.name}: {audio.format} ({audio.subtype}), {audio.samplerate} Hz, {channels}, {audio.duration_s:.1f} s"
    )
    details = [
        f"format {audio.format}, subtype {audio.subtype}, {audio.samplerate} Hz, {channels}, {audio.duration_s:.2f} s"
    ]
    if audio.channels > 1:
        details.append("converted to mono by the loader (librosa.load mixes the channels)")
    if audio.samplerate != AUDIO_LOAD_RATE:
        details.append(f"resampled from {audio.samplerate} Hz to 16 kHz by the loader (librosa.load(sr=16000))")
    data = asdict(audio) | {"given": audio.name, "path": shown(audio.path), "duration_s": audio.duration_s}
    with open(audio.path, "rb") as file:
        id3_tagged = audio.format == "MP3" and file.read(3) == b"ID3"
    problems, remedies = [], []
    if audio.samplerate < AUDIO_LOAD_RATE:
        # Not a crash: the loader upsamples. But the band above samplerate/2 is gone for good.
        problems.append(f"{audio.samplerate} Hz is below the 16 kHz wav2vec2 was trained on")
        details.append(f"nothing above {audio.samplerate / 2000:g} kHz survives; the seeds ask for 16 kHz or more")
        resample = ffmpeg(audio.given, "-ar", "16000", "-ac", "1", suffix="16k")
        remedies.append(
            f"use a recording made at 16 kHz or more; resampling this one (`{resample}`) only does what the loader does"
        )
    if id3_tagged:
        problems.append("an MP3 with ID3 metadata, which the seeds report makes the upload hang")
        convert = ffmpeg(audio.given, "-map_metadata", "-1", "-ar", "16000", "-ac", "1", suffix="16k")
        remedies.append(f"convert it to a 16 kHz mono WAV without metadata: `{convert}`")
    if problems:
        return warned(f"{audio.name}: {'; '.join(problems)}", details, "; ".join(remedies), data)
    return passed(summary, details, data)


@dataclass(frozen=True)
class Levels:
    """The mono mix's loudness, as the loader will hear it."""

    lead_s: float  # silence before the first sound
    trail_s: float  # silence after the last sound
    sound_rms_dbfs: float | None  # RMS of the frames above SILENCE_DBFS; None: all silent
    peak_dbfs: float
    windowed: bool  # only the first and last edge_window were read


def dbfs(power) -> float:
    return 10 * math.log10(max(float(power), 1e-20))


def frame_energy(audio: AudioFile, start: int, stop: int, frame_len: int):
    """Sum of squares and sample count of each frame of the mono mix in [start, stop), and its peak."""
    import numpy as np
    import soundfile

    sums, counts, peak = [np.zeros(0)], [np.zeros(0, dtype=np.int64)], 0.0
    # whole frames per block: only the very last frame is partial
    blocksize = frame_len * max(1, min(FRAMES_PER_BLOCK, BLOCK_BYTES // (frame_len * audio.frame_bytes)))
    for block in soundfile.blocks(str(audio.path), blocksize, start=start, stop=stop, dtype="float32", always_2d=True):
        mono = block.mean(axis=1)  # as librosa mixes it
        starts = np.arange(0, len(mono), frame_len)
        sums.append(np.add.reduceat(np.square(mono, dtype=np.float64), starts))
        counts.append(np.diff(starts, append=len(mono)))
        peak = max(peak, float(np.abs(mono).max(initial=0.0)))
    return np.concatenate(sums), np.concatenate(counts), peak


def edge_window(audio: AudioFile) -> int:
    """Samples read at each end of a file too long (or too large decoded) to read whole."""
    return min(round(EDGE_WINDOW_S * audio.samplerate), EDGE_WINDOW_BYTES // audio.frame_bytes)


def measure_levels(audio: AudioFile) -> Levels:
    frame_len = max(1, round(audio.samplerate * FRAME_S))
    windowed = audio.duration_s > FULL_ANALYSIS_MAX_S or audio.frames * audio.frame_bytes > FULL_ANALYSIS_MAX_BYTES
    window = edge_window(audio)
    spans = [(0, window), (audio.frames - window, audio.frames)] if windowed else [(0, audio.frames)]
    reads = [frame_energy(audio, start, stop, frame_len) for start, stop in spans]
    loud = [(sums > counts * 10 ** (SILENCE_DBFS / 10)).nonzero()[0] for sums, counts, _ in reads]  # frame indices
    head, tail = loud[0], loud[-1]
    head_len, tail_len = (int(counts.sum()) for _, counts, _ in (reads[0], reads[-1]))  # samples really read
    lead = head[0] * frame_len if head.size else head_len
    trail = tail_len - min((tail[-1] + 1) * frame_len, tail_len) if tail.size else tail_len
    sound_energy = sum(float(sums[i].sum()) for (sums, _, _), i in zip(reads, loud))
    sound_samples = sum(int(counts[i].sum()) for (_, counts, _), i in zip(reads, loud))
    rms = dbfs(sound_energy / sound_samples) if sound_samples else None
    peak = max(p for _, _, p in reads)
    return Levels(lead / audio.samplerate, trail / audio.samplerate, rms, dbfs(peak * peak), windowed)


@check("input.audio.silence", GROUP)
def check_silence(ctx: CheckContext) -> Outcome:
    audio = needs_audio(ctx)
    if isinstance(audio, Outcome):
        return audio
    levels = measure_levels(audio)
    data = asdict(levels)
    details = [f"silence: a 20 ms frame below {SILENCE_DBFS:g} dBFS (the mono mix, as the loader hears it)"]
    if levels.windowed:
        details.append(
            f"over {FULL_ANALYSIS_MAX_S / 3600:g} h or {FULL_ANALYSIS_MAX_BYTES / 2**30:g} GiB decoded: "
            f"only the first and last {edge_window(audio) / audio.samplerate:.3g} s were read"
        )
    if levels.sound_rms_dbfs is None:
        return warned(
            f"{audio.name} is silent: no 20 ms frame above {SILENCE_DBFS:g} dBFS",
            details,
            "check the recording: a muted input, or stereo channels in opposite phase that cancel in the mono mix?",
            data,
        )
    details.append(f"the sound: RMS {levels.sound_rms_dbfs:.1f} dBFS, peak {levels.peak_dbfs:.1f} dBFS")
    edges = f"{levels.lead_s:.2f} s of silence at the start, {levels.trail_s:.2f} s at the end"
    problems, remedies = [], []
    if max(levels.lead_s, levels.trail_s) > EDGE_SILENCE_S:
        problems.append(edges)
        start = max(0.0, levels.lead_s - KEEP_S)
        end = min(audio.duration_s, audio.duration_s - levels.trail_s + KEEP_S)
        trim = ffmpeg(audio.given, "-ss", f"{start:.2f}", "-to", f"{end:.2f}", suffix="trimmed")
        remedies.append(
            f"trim it (the seeds: over {EDGE_SILENCE_S:g} s of silence at either end misleads the model): `{trim}`"
        )
    if levels.sound_rms_dbfs < QUIET_RMS_DBFS or levels.peak_dbfs < QUIET_PEAK_DBFS:
        problems.append(f"quiet (RMS {levels.sound_rms_dbfs:.1f} dBFS, peak {levels.peak_dbfs:.1f} dBFS)")
        details.append(
            f"quiet: RMS below {QUIET_RMS_DBFS:g} dBFS or peak below {QUIET_PEAK_DBFS:g} dBFS (the seeds warn against low volume)"
        )
        normalise = ffmpeg(
            audio.given, "-af", "loudnorm", "-ar", str(audio.samplerate), suffix="loud"
        )  # loudnorm outputs 192 kHz
        remedies.append(f"normalise it: `{normalise}`")
    if problems:
        return warned(f"{audio.name}: {'; '.join(problems)}", details, "; ".join(remedies), data)
    return passed(f"{audio.name}: {edges}, RMS {levels.sound_rms_dbfs:.1f} dBFS", details, data)


@check("input.audio.clips", GROUP)
def check_clips(ctx: CheckContext) -> Outcome:
    audio = needs_audio(ctx)
    if isinstance(audio, Outcome):
        return audio
    frames_per_clip, num_clip = ctx.config.infer_frames, ctx.config.num_clip
    if frames_per_clip < 1:
        return skipped(f"--infer-frames {frames_per_clip} makes no clips")
    audio_clips = clips_for_audio(Fraction(audio.frames, audio.samplerate), frames_per_clip)
    clips = min(num_clip, audio_clips)
    clip_s, video_s = frames_per_clip / VIDEO_FPS, clips * frames_per_clip / VIDEO_FPS
    data = {
        "clips": clips,
        "video_s": video_s,
        "audio_clips": audio_clips,
        "duration_s": audio.duration_s,
        "infer_frames": frames_per_clip,
        "num_clip": num_clip,
    }
    details = [
        f"clips = min(--num_clip {num_clip}, {audio_clips}) = {clips}: {audio.duration_s:.2f} s of audio as wav2vec2 frames at"
        f" {AUDIO_FEATURE_RATE} per second, int(frames / ({frames_per_clip} x {AUDIO_FEATURE_RATE}/{VIDEO_FPS})) + 1,"
        " as upstream computes it (audio_encoder.py)",
        f"each clip is {frames_per_clip} frames = {clip_s:.2f} s of {VIDEO_FPS} fps video",
    ]
    summary = f"{audio.duration_s:.1f} s of audio -> {clips} clip{'s' if clips > 1 else ''} of {frames_per_clip} frames, about {video_s:.1f} s of video"
    if audio.duration_s < clip_s:
        return warned(
            f"{audio.duration_s:.2f} s of audio is shorter than one clip ({frames_per_clip} frames = {clip_s:.2f} s)",
            [
                *details,
                f"the last {clip_s - audio.duration_s:.2f} s of the clip are driven by silence (the audio features are zero-padded)",
            ],
            f"use at least {clip_s:.2f} s of audio, or fewer frames per clip (--infer-frames, a multiple of 4)",
            data,
        )
    if num_clip < audio_clips:
        summary += f": --num_clip {num_clip} cuts the audio ({audio_clips} clips would cover all of it)"
    return passed(summary, details, data)


CHECKS = (check_audio, check_silence, check_clips)
