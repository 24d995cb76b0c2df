"""Input checks: the reference image and the prompt (the audio has its own module).

The seed articles spend pages on inputs that quietly spoil a run. These say what Live Avatar will
really do with them, before the load: the real generation size, a rotation it will not undo, a
prompt that gives the model little to work with. Images are read with Pillow, lazily, with its
decompression-bomb limit kept.
"""

from __future__ import annotations

import os
import re
import warnings

from avatardoctor.checks.base import CheckContext, Outcome, check, failed, passed, skipped, warned
from avatardoctor.files import not_regular_file
from avatardoctor.predict import geometry, reference_hw
from avatardoctor.units import file_size
from avatardoctor.upstream import PROMPT_LIGHTING_OR_STYLE_EN, PROMPT_LIGHTING_OR_STYLE_ZH

GROUP = "Inputs"
SMALL_SIDE = 512  # px: below this the face has little detail to animate
LARGE_FILE_BYTES = 20 * 2**20
EXIF_ORIENTATION = 0x0112
# Cues that contradict each other, in English and in Chinese (the languages upstream's prompts are written in).
CONTRADICTIONS = (
    ("happy", "sad"),
    ("smiling", "crying"),
    ("calm", "angry"),
    ("day", "night"),
    ("indoor", "outdoor"),
    ("young", "old"),
    ("laughing", "crying"),
    ("开心", "悲伤"),
    ("微笑", "哭"),
    ("平静", "愤怒"),
    ("白天", "夜晚"),
    ("室内", "室外"),
    ("年轻", "年老"),
)
# Scripts written without spaces between words (Chinese, Japanese kana, Thai, Lao, Myanmar, Khmer): there
# a character is the unit, and about two make a word.
UNSPACED = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff]")
CHARACTERS_PER_WORD = 2
SHORT_PROMPT_WORDS = 8


def prompt_words(prompt: str) -> tuple[list[str], int]:
    """(the space-separated words, the characters of unspaced scripts) of a prompt."""
    unspaced = len(UNSPACED.findall(prompt))
    return re.findall(r"[\w'-]+", UNSPACED.sub(" ", prompt.lower())), unspaced


def _has_cue(prompt: str, words: list[str], cue: str) -> bool:
    """A word cue matches a whole word; a cue in an unspaced script matches anywhere (it has no word edges)."""
    return cue in prompt if UNSPACED.search(cue) else cue in words


def _open_image(path):
    """(image, problem): the opened image, or why it cannot be used."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.lexists(path):
        return None, "not found"
    if kind := not_regular_file(path):  # only regular files are read: opening a FIFO blocks forever
        return None, f"{kind}, not an image"
    if os.path.getsize(path) == 0:
        return None, "empty (0 bytes)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "error", Image.DecompressionBombWarning
            )  # below twice its limit Pillow warns, then decodes
            img = Image.open(path)
        img.load()  # decode now: a truncated file fails here, not minutes into the run
        return img, None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return None, f"too large to decode safely ({e})"
    except UnicodeEncodeError:
        return None, "the path cannot be encoded for the filesystem (non-UTF-8 name?)"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        return None, f"not an image Pillow can decode ({str(e)[:80]})"


@check("input.image", GROUP)
def check_image(ctx: CheckContext) -> Outcome:
    path = ctx.config.image
    if path is None:
        return skipped("no --image given")
    img, problem = _open_image(path)
    if problem:
        return failed(f"--image {path}: {problem}", remedy="pass a readable PNG or JPEG portrait")
    with img:
        w, h, mode, fmt = img.width, img.height, img.mode, img.format
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    size = os.path.getsize(path)
    details = [f"{fmt} {w}x{h} (WxH), mode {mode}, {file_size(size)}"]
    data = {"format": fmt, "width": w, "height": h, "mode": mode, "bytes": size, "exif_orientation": orientation}
    warnings, remedies = [], []
    if w * h < SMALL_SIDE * SMALL_SIDE:
        warnings.append(f"small: {w}x{h}, under {SMALL_SIDE}x{SMALL_SIDE}: little facial detail to animate")
        remedies.append("use a sharper, larger portrait (at least 512x512)")
    if orientation not in (1, None):
        warnings.append(
            f"EXIF orientation {orientation}: viewers show it rotated upright, the pipeline may read the stored pixels sideways"
        )
        remedies.append(
            f"save it upright: python -c \"from PIL import Image, ImageOps; ImageOps.exif_transpose(Image.open('{path}')).save('upright.png')\""
        )
    if mode == "CMYK":
        warnings.append("CMYK: converted to RGB when loaded; colours may shift")
        remedies.append("export it as RGB")
    if mode in ("I;16", "I;16B", "I", "F") or (fmt == "PNG" and "16" in mode):
        details.append("16-bit: reduced to 8 bits per channel when loaded")
    if size > LARGE_FILE_BYTES:
        details.append(
            f"{file_size(size)} on disk: only its pixels matter, and they are resized to the generation size; "
            "a large file costs load time, not GPU memory (the seeds' claim otherwise is wrong)"
        )
    if warnings:
        return warned(warnings[0], details + warnings[1:], "; ".join(remedies), data)
    return passed(f"{fmt} {w}x{h}, {mode}", details, data)


@check("input.image.size", GROUP)
def check_generation_size(ctx: CheckContext) -> Outcome:
    """The size the prediction uses, computed by the same code (the image's header, not its pixels)."""
    path = ctx.config.image
    if path is None:
        return skipped("no --image given: the aspect of --size is assumed")
    hw, unreadable = reference_hw(ctx.config)
    if unreadable or hw is None:
        return skipped("the image's size cannot be read (see input.image)")
    geo, (h, w) = geometry(ctx.config, hw), hw
    data = {"height": geo.height, "width": geo.width}
    details = [
        "the image's aspect within the --size area, padded up to multiples of 64 and never upscaled",
        "the memory prediction uses this size",
    ]
    budget = ctx.config.size.area
    if geo.height * geo.width < budget * 0.5 and h * w < budget:
        details.append(
            f"the image ({w}x{h}) is smaller than the --size budget, so the video stays small: it is not upscaled"
        )
    return passed(f"{ctx.config.size} -> {geo.height}x{geo.width} (HxW) for this {w}x{h} image", details, data)


@check("input.prompt", GROUP)
def check_prompt(ctx: CheckContext) -> Outcome:
    """The seeds' guidance, as gentle warnings: never a failure."""
    prompt = ctx.config.prompt
    if prompt is None:
        return skipped("no --prompt given")
    words, unspaced = prompt_words(prompt)
    length = len(words) + unspaced / CHARACTERS_PER_WORD  # in words, whatever the script
    size = f"{len(words)} words" if not unspaced else f"{len(prompt.strip())} characters"
    hints = []
    if length < SHORT_PROMPT_WORDS:
        hints.append(f"short ({size}): describe the person, expression, setting and lighting")
    contradictions = [
        f"{a}/{b}" for a, b in CONTRADICTIONS if _has_cue(prompt, words, a) and _has_cue(prompt, words, b)
    ]
    if contradictions:
        hints.append(f"contradictory cues: {', '.join(contradictions)}")
    cues = PROMPT_LIGHTING_OR_STYLE_EN + PROMPT_LIGHTING_OR_STYLE_ZH
    if not any(_has_cue(prompt, words, cue) for cue in cues):
        hints.append("no lighting or style cue (e.g. 'soft studio lighting, realistic photo' or '柔光，写实照片')")
    data = {"words": len(words), "unspaced_characters": unspaced, "hints": hints}
    if hints:
        return warned(
            f"the prompt could guide the model more: {hints[0]}", hints[1:], "add what the video should look like", data
        )
    return passed(f"{size}, with setting and lighting cues", data=data)


CHECKS = (check_image, check_generation_size, check_prompt)
