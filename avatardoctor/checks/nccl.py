"""NCCL environment: the variables users copy from articles, judged against this machine.

Live Avatar always calls init_process_group("nccl"), even with one GPU, so these matter in every
mode. Each variable that is set (and a few that matter when unset) gets one finding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from avatardoctor.checks.base import CheckContext, Outcome, Status, check, worst

HEARTBEAT_DEFAULT_S = 480  # torch's ProcessGroupNCCL default (8 minutes)
NCCL_DEBUG_LEVELS = ("VERSION", "WARN", "INFO", "ABORT", "TRACE")

Finding = tuple[Status, str, str | None]  # status, explanation, remedy


def _flag(env: Mapping[str, str], key: str) -> bool | None:
    """NCCL's integer switches: None unset, True for a non-zero integer."""
    value = env.get(key)
    if value is None:
        return None
    try:
        return int(value.strip()) != 0
    except ValueError:
        return True  # NCCL warns and treats junk as set; say so through the finding's text


def _p2p_disable(ctx: CheckContext) -> Finding | None:
    if not _flag(ctx.env, "NCCL_P2P_DISABLE"):
        return None
    if ctx.config.nproc < 2:
        return Status.PASS, "NCCL_P2P_DISABLE=1: no effect with one process", None
    if ctx.handoffs and not ctx.p2p_missing:
        return (
            Status.WARN,
            "NCCL_P2P_DISABLE=1 forces the rank-to-rank hand-off through host memory although P2P "
            "works between every consecutive pair of the ranks' GPUs: slower for nothing",
            "unset NCCL_P2P_DISABLE (set it only if a NCCL test hangs with P2P on)",
        )
    return Status.PASS, "NCCL_P2P_DISABLE=1: consistent with this machine (no P2P between the ranks' GPUs)", None


def _shm_disable(ctx: CheckContext) -> Finding | None:
    if not _flag(ctx.env, "NCCL_SHM_DISABLE") or ctx.config.nproc < 2:
        return None
    no_p2p = _flag(ctx.env, "NCCL_P2P_DISABLE") or ctx.p2p_missing
    if no_p2p:
        return (
            Status.WARN,
            "NCCL_SHM_DISABLE=1 with no P2P: NCCL falls back to sockets, the slowest path",
            "unset NCCL_SHM_DISABLE",
        )
    return Status.PASS, "NCCL_SHM_DISABLE=1: unused while P2P works", None


def _ib_disable(ctx: CheckContext) -> Finding | None:
    if _flag(ctx.env, "NCCL_IB_DISABLE") is None:
        return None
    return (
        Status.PASS,
        "NCCL_IB_DISABLE: no effect on one machine (InfiniBand carries traffic between nodes only); "
        "the seed articles' blanket advice to set it is harmless here",
        None,
    )


def _matches(interface: str, pattern: str) -> bool:
    if pattern.startswith("="):
        return interface == pattern[1:]
    return interface.startswith(pattern)


def _socket_ifname(ctx: CheckContext) -> Finding | None:
    value = ctx.env.get("NCCL_SOCKET_IFNAME")
    if value is None:
        return None
    interfaces = ctx.probes.interfaces()
    exclude = value.startswith("^")
    patterns = [p for p in value.lstrip("^").split(",") if p]
    hits = [i for i in interfaces if any(_matches(i, p) for p in patterns)]
    usable = [i for i in interfaces if i not in hits] if exclude else hits
    if not usable:
        return (
            Status.FAIL,
            f"NCCL_SOCKET_IFNAME={value} leaves no network interface here ({', '.join(interfaces)}): "
            "NCCL's bootstrap fails with 'no socket interface found'",
            f"unset NCCL_SOCKET_IFNAME, or name one of: {', '.join(interfaces)}",
        )
    return Status.PASS, f"NCCL_SOCKET_IFNAME={value}: selects {', '.join(usable)}", None


def _heartbeat(ctx: CheckContext) -> Finding | None:
    value = ctx.env.get("TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC")
    if value is None:
        return (
            Status.PASS,
            f"TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC unset: torch's default is {HEARTBEAT_DEFAULT_S} s, "
            "not the 30 s the seed articles claim",
            None,
        )
    try:
        seconds = int(value)
    except ValueError:
        return (
            Status.WARN,
            f"TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC={value!r} is not a whole number of seconds",
            f"export TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC={HEARTBEAT_DEFAULT_S}",
        )
    if seconds < 60:
        return (
            Status.WARN,
            f"TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC={seconds}: a slow step (the first torch.compile pass, "
            "T5 encoding) can stall the watchdog that long, and the monitor then aborts every rank",
            f"unset it (default {HEARTBEAT_DEFAULT_S} s) or raise it to 600 or more",
        )
    note = "; a real hang then goes unreported for a long time (avatardoctor run's hang timeout still catches it)"
    return Status.PASS, f"TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC={seconds}" + (note if seconds >= 3600 else ""), None


def _blocking_wait(ctx: CheckContext) -> Finding | None:
    blocking = ctx.env.get("TORCH_NCCL_BLOCKING_WAIT")
    async_errors = ctx.env.get("TORCH_NCCL_ASYNC_ERROR_HANDLING")
    if blocking is None and async_errors is None:
        return None
    if async_errors == "0" and blocking != "1":
        return (
            Status.WARN,
            "TORCH_NCCL_ASYNC_ERROR_HANDLING=0 without TORCH_NCCL_BLOCKING_WAIT=1: a failed rank can "
            "leave the others waiting forever",
            "export TORCH_NCCL_BLOCKING_WAIT=1 (as the upstream Gradio scripts do) or unset both",
        )
    return (
        Status.PASS,
        f"TORCH_NCCL_BLOCKING_WAIT={blocking or 'unset'}, TORCH_NCCL_ASYNC_ERROR_HANDLING={async_errors or 'unset'}: "
        "a stuck collective raises after the process-group timeout instead of hanging",
        None,
    )


def _debug(ctx: CheckContext) -> Finding | None:
    value = ctx.env.get("NCCL_DEBUG")
    if value is None:
        return (
            Status.PASS,
            "NCCL_DEBUG unset: NCCL stays silent even when it fails",
            None,
        )
    level = value.upper()
    if level not in NCCL_DEBUG_LEVELS:
        return (
            Status.WARN,
            f"NCCL_DEBUG={value} is not a level NCCL knows ({', '.join(NCCL_DEBUG_LEVELS)})",
            "export NCCL_DEBUG=WARN",
        )
    if level == "TRACE":
        return (
            Status.WARN,
            "NCCL_DEBUG=TRACE logs every operation: huge logs and slower steps",
            "export NCCL_DEBUG=WARN (or INFO while diagnosing)",
        )
    return Status.PASS, f"NCCL_DEBUG={value}", None


FINDINGS: tuple[Callable[[CheckContext], Finding | None], ...] = (
    _p2p_disable,
    _shm_disable,
    _ib_disable,
    _socket_ifname,
    _heartbeat,
    _blocking_wait,
    _debug,
)


@check("nccl.env", "NCCL")
def check_nccl_env(ctx: CheckContext) -> Outcome:
    findings = [f for f in (rule(ctx) for rule in FINDINGS) if f is not None]
    status = worst(s for s, _, _ in findings)
    problems = [(s, text, remedy) for s, text, remedy in findings if s is not Status.PASS]
    marks = {Status.PASS: "ok", Status.WARN: "!", Status.FAIL: "x"}
    details = [f"[{marks[s]}] {text}" for s, text, _ in findings]
    seen = {k: ctx.env[k] for k in sorted(ctx.env) if k.startswith(("NCCL_", "TORCH_NCCL_"))}
    data = {"variables": seen, "problems": [text for _, text, _ in problems]}
    if not problems:
        summary = f"NCCL settings fit this machine ({len(seen)} NCCL variable{'s' if len(seen) != 1 else ''} set)"
        return Outcome(Status.PASS, summary, tuple(details), None, data)
    first = max(problems, key=lambda p: p[0].rank)
    remedies = "; ".join(r for _, _, r in problems if r)
    more = f" (+{len(problems) - 1} more below)" if len(problems) > 1 else ""
    return Outcome(status, first[1] + more, tuple(details), remedies or None, data)


CHECKS = (check_nccl_env,)
