"""input.image, input.image.size and input.prompt on real files made at run time."""

from __future__ import annotations

import os

import pytest
from conftest import make_ctx
from PIL import Image

from avatardoctor.checks import fit, inputs
from avatardoctor.checks.base import Status


def run(check, **config):
    return check.run(make_ctx("5xH800-healthy", **config))


def portrait(path, size=(720, 1280), mode="RGB", **save):
    Image.new(mode, size, 128 if mode != "RGB" else (180, 140, 120)).save(path, **save)
    return path


def written(path, data: bytes):
    path.write_bytes(data)
    return path


def test_a_good_portrait_passes_and_sets_the_generation_size(tmp_path):
    img = portrait(tmp_path / "face.png", (720, 400))  # landscape 720x400 (WxH)
    r = run(inputs.check_image, image=img)
    assert r.status is Status.PASS and r.summary == "PNG 720x400, RGB"
    size = run(inputs.check_generation_size, image=img)
    assert size.summary == "720*400 -> 384x704 (HxW) for this 720x400 image"
    assert size.data == {"height": 384, "width": 704}


def test_the_prediction_uses_the_images_aspect(tmp_path):
    img = portrait(tmp_path / "tall.png", (400, 720))
    assert run(inputs.check_generation_size, image=img).data == {"height": 704, "width": 384}
    peak = fit.check_peak.run(make_ctx("5xH800-healthy", image=img))
    assert any(d.startswith("704x384 px") for d in peak.details)


def test_small_image_warns(tmp_path):
    r = run(inputs.check_image, image=portrait(tmp_path / "small.png", (300, 300)))
    assert r.status is Status.WARN and "under 512x512" in r.summary


def test_small_image_is_not_upscaled(tmp_path):
    r = run(inputs.check_generation_size, image=portrait(tmp_path / "small.png", (300, 300)))
    assert r.data == {"height": 320, "width": 320}
    assert any("not upscaled" in d for d in r.details)


def test_exif_rotation_is_named_with_a_fix(tmp_path):
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: how phones store portraits
    Image.new("RGB", (1280, 720), (180, 140, 120)).save(path, exif=exif)
    r = run(inputs.check_image, image=path)
    assert r.status is Status.WARN and "EXIF orientation 6" in r.summary and "exif_transpose" in r.remedy


def test_cmyk_and_16_bit(tmp_path):
    cmyk = run(inputs.check_image, image=portrait(tmp_path / "print.jpg", (800, 800), mode="CMYK"))
    assert cmyk.status is Status.WARN and cmyk.summary.startswith("CMYK")
    deep = run(inputs.check_image, image=portrait(tmp_path / "deep.png", (800, 800), mode="I;16"))
    assert any("16-bit" in d for d in deep.details)


def test_large_file_is_explained_not_feared(tmp_path):
    path = tmp_path / "huge.png"
    Image.frombytes("RGB", (3000, 3000), os.urandom(3000 * 3000 * 3)).save(path)  # noise does not compress
    r = run(inputs.check_image, image=path)
    assert r.status is Status.PASS and any("costs load time, not GPU memory" in d for d in r.details)


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda d: d / "missing.png", "not found"),
        (lambda d: (d / "folder.png").mkdir() or d / "folder.png", "a directory"),
        (lambda d: (d / "empty.png").write_bytes(b"") or d / "empty.png", "empty (0 bytes)"),
        (lambda d: written(d / "notes.png", b"these are my notes"), "not an image Pillow can decode"),
        (
            lambda d: written(d / "cut.png", portrait(d / "whole.png", (600, 600)).read_bytes()[:300]),
            "not an image Pillow can decode",
        ),
        (lambda d: d / os.fsdecode(b"bad\xff.png"), "not found"),
    ],
)
def test_bad_images_are_failed_checks_not_tracebacks(tmp_path, make, problem):
    path = make(tmp_path)
    r = run(inputs.check_image, image=path)
    assert r.status is Status.FAIL and problem in r.summary and "crashed" not in r.data
    header_readable = path.name == "cut.png"  # its size is in the header: the prediction still uses its aspect
    size = run(inputs.check_generation_size, image=path)
    assert size.status is (Status.PASS if header_readable else Status.SKIP)
    peak = fit.check_peak.run(make_ctx("5xH800-healthy", image=path))  # the prediction carries on
    assert peak.status is Status.PASS
    assert any("unreadable" in d for d in peak.details) is not header_readable
    if header_readable:  # the size shown is the size predicted
        assert any(d.startswith(f"{size.data['height']}x{size.data['width']} px") for d in peak.details)


@pytest.mark.parametrize(
    "prompt, status, hint",
    [
        ("a woman talking", Status.WARN, "short (3 words)"),
        (
            "A happy but sad young woman speaks to the camera in soft studio lighting, realistic photo",
            Status.WARN,
            "contradictory cues: happy/sad",
        ),
        (
            "A middle-aged man with a grey beard explains the weather forecast calmly to viewers",
            Status.WARN,
            "no lighting or style cue",
        ),
        (
            "A young woman with long black hair speaks warmly to the camera, soft studio lighting, realistic photo",
            Status.PASS,
            None,
        ),
    ],
)
def test_prompt_hints_are_gentle(prompt, status, hint):
    r = run(inputs.check_prompt, prompt=prompt)
    assert r.status is status and r.status is not Status.FAIL
    if hint:
        assert hint in r.summary or hint in r.details


def test_no_inputs_skip():
    for c in inputs.CHECKS:
        assert run(c).status is Status.SKIP


def test_a_fifo_is_refused_without_opening_it(tmp_path):
    """Opening a FIFO blocks until a writer comes: `check` and `predict --image fifo` hung (the size is read first)."""
    from test_ckpt_hashing import writer_releasing_any_reader

    from avatardoctor.errors import InputError
    from avatardoctor.predict import image_size

    fifo = tmp_path / "face.png"
    os.mkfifo(fifo)
    with writer_releasing_any_reader(fifo):
        with pytest.raises(InputError, match="a FIFO"):
            image_size(fifo)
        r = run(inputs.check_image, image=fifo)
        size = run(inputs.check_generation_size, image=fifo)
    assert r.status is Status.FAIL and r.summary == f"--image {fifo}: a FIFO (named pipe), not an image"
    assert size.status is Status.SKIP


def test_an_image_over_pillows_pixel_limit_is_refused_before_decoding(tmp_path):
    """10000x10000 is under twice Pillow's limit, where it only warns and decodes 300 MB of pixels."""
    import struct
    import zlib

    png = bytearray(portrait(tmp_path / "small.png", (8, 8)).read_bytes())
    ihdr = b"IHDR" + struct.pack(">II", 10_000, 10_000) + png[24:29]
    png[12:33] = ihdr + struct.pack(">I", zlib.crc32(ihdr))
    r = run(inputs.check_image, image=written(tmp_path / "huge.png", bytes(png)))
    assert (
        r.status is Status.FAIL
        and "too large to decode safely (Image size (100000000 pixels) exceeds limit" in r.summary
    )


# Chinese prompts as upstream writes them: its prompt extender's example
# (liveavatar/models/wan/wan_2_2/utils/system_prompt.py:25, cue words at :6-14).
UPSTREAM_ZH = "边缘光，中近景，日光，左侧重构图，暖色调，硬光，晴天光，侧光，白天，一个年轻的女孩坐在高草丛生的田野中，两条毛发蓬松的小毛驴站在她身后。"


@pytest.mark.parametrize(
    "prompt, status, hint",
    [
        (UPSTREAM_ZH, Status.PASS, None),  # 70 characters with lighting cues: neither short nor cue-less
        (
            "一位中年男子留着灰色胡子，面对观众平静地讲解明天的天气预报，双手自然地比划着，表情专注而友好。",
            Status.WARN,
            "no lighting or style cue",
        ),
        ("一个女人在说话", Status.WARN, "short (7 characters)"),
        (
            "一个开心却又悲伤的年轻女子在柔光下对着镜头说话，写实照片风格，背景是明亮的客厅。",
            Status.WARN,
            "contradictory cues: 开心/悲伤",
        ),
    ],
)
def test_prompt_checks_read_chinese_by_characters_and_find_its_cues(prompt, status, hint):
    r = run(inputs.check_prompt, prompt=prompt)
    assert r.status is status, (r.summary, r.details)
    if hint:
        assert hint in r.summary or hint in r.details
    else:
        assert r.summary == f"{len(prompt)} characters, with setting and lighting cues"
