"""Fit checks: the predicted peak of every GPU against what it can give, and the numbers behind it.

The prediction is avatardoctor.predict's (docs/memory-model.md); when it does not fit, the remedy is
the smallest one-flag change that would, or else the cheapest catalogue hardware that would.
"""

from __future__ import annotations

from avatardoctor.advice import hardware_advice, smallest_change
from avatardoctor.checks.base import CheckContext, Outcome, Status, check, needs_gpu_facts, passed, skipped
from avatardoctor.predict import PHASE_NAMES, VERDICT_WORDS
from avatardoctor.units import GIB

GROUP = "Fit"
STATUS = {"fits": Status.PASS, "tight": Status.WARN, "wont-fit": Status.FAIL, "wont-run": Status.FAIL}


def _remedy(ctx: CheckContext) -> str | None:
    if ctx.prediction.refusals:  # no memory change or hardware runs what upstream's code stops
        return "; ".join(dict.fromkeys(v.remedy for v in ctx.prediction.refusals)) + " (see la.asserts)"

    change = smallest_change(ctx.config, ctx.rank_gpus, ctx.components, ctx.terms)
    if change:
        g = change.prediction.binding
        assert g is not None  # a prediction that fits has GPUs
        return f"{change.flags} (then GPU {g.index} peaks at {g.peak_bytes / GIB:.2f} of {g.usable_bytes / GIB:.2f} GiB usable)"
    options = hardware_advice(ctx.config, ctx.components, ctx.terms)
    if options:
        listed = ", ".join(o.spec + (" (bf16: no fp8 there)" if o.fp8_dropped else "") for o in options)
        return f"no one-flag change fits these GPUs; this configuration fits {listed}; or see `avatardoctor plan`"
    return "no one-flag change fits and no catalogue machine fits this configuration; see `avatardoctor plan`"


@check("fit.peak", GROUP)
def check_peak(ctx: CheckContext) -> Outcome:
    if skip := needs_gpu_facts(ctx):
        return skip
    p = ctx.prediction
    details = [
        f"GPU {g.index} ({g.role}): peak {g.peak_bytes / GIB:.2f} ± {g.band_bytes / GIB:.2f} GiB at "
        f"{PHASE_NAMES[g.phase]}, {g.usable_bytes / GIB:.2f} GiB usable, headroom {g.headroom_bytes / GIB:.2f} GiB: "
        f"{VERDICT_WORDS[g.verdict]}"
        for g in p.gpus
    ]
    details.append(
        f"{p.geometry.height}x{p.geometry.width} px, {p.geometry.latent_frames} latent frames per clip; "
        f"sizes from the {p.sizes_source}; estimates {p.terms.source}"
    )
    details.extend(p.notes)
    status = STATUS[p.verdict]
    summary = f"{VERDICT_WORDS[p.verdict]}: {p.explanation()}"
    remedy = _remedy(ctx) if status is not Status.PASS else None
    return Outcome(status, summary, tuple(details), remedy, {"prediction": p.to_dict()})


@check("fit.estimates", GROUP)
def check_estimates(ctx: CheckContext) -> Outcome:
    t = ctx.terms
    details = [
        f"CUDA context {t.context_bytes / GIB:.2f} ± {t.context_band_bytes / GIB:.2f} GiB per process, "
        f"NCCL {t.nccl_bytes_per_peer / GIB:.2f} GiB per peer",
        f"activations {t.activation_bytes_per_token_dim:.1f} bytes per token per model dim (± {t.activation_band:.0%})",
        f"VAE decode {t.decode_bytes_per_pixel:.0f} bytes per output pixel of a 12-frame chunk (± {t.decode_band:.0%})",
        f"allocator fragmentation: {t.fragmentation:.0%} of each GPU kept out of usable",
    ]
    if t.runs:
        return passed(f"estimated terms {t.source}", details, {"source": t.source, "runs": t.runs})
    return skipped(
        "estimated terms are the defaults: no measured runs yet (`avatardoctor calibrate`)",
        details,
        {"source": t.source, "runs": 0},
    )


CHECKS = (check_peak, check_estimates)
