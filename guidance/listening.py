"""Judges that hear waveforms, plugged into the evaluations as a hook.

`guidance/` never imports the outside judges (PocketSphinx digit ASR, DNSMOS); the evaluations take
a `Listen` function instead, `listen(waves (n, samples), sample_rate, targets (n,) or None) -> summary`,
and the command line fills it from `outside_judges` (`outside_judges.report.listen`). A summary is a
dict with at least "asr_accuracy" (None without targets), "sig", "bak" and "ovrl" (DNSMOS means).

`listen_to` turns one batch into the figures a report stores: rows that are not finite are never
played (they would be silence), count as ASR misses, as they do for the project's own judge, and
are left out of the DNSMOS means. `real_clip_subset` fixes, by rule, which real clips the reference
rows (real clips, vocoder round trip) are heard on.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from guidance.data import FSDD_SPEAKERS, Clip, as_written

Listen = Callable[[torch.Tensor, int, "torch.Tensor | None"], dict]

OUTSIDE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("asr_accuracy", "outside ASR acc."),
    ("dnsmos_sig", "SIG"),
    ("dnsmos_bak", "BAK"),
    ("dnsmos_ovrl", "OVRL"),
)

WHAT_EACH_JUDGE_HEARS: tuple[str, ...] = (
    "## What each judge hears",
    "",
    "- The project's own judges (digit and speaker TDNNs, trained on FSDD's training takes) read log-Mel features "
    "of the re-analysed audio: they hear what the vocoder keeps of the log-Mel, not phase or artefacts that "
    "leave the log-Mel intact.",
    "- The outside ASR (PocketSphinx's general US-English model, nobody on this project trained it) hears the "
    "waveform, restricted to a 10-word grammar (zero .. nine). It is a general English model, weak on \"six\" "
    "for FSDD's 8 kHz speech (the /s/ energy above 4 kHz is missing; about 30% on real clips).",
    "- DNSMOS (Microsoft's P.835 model) predicts the perceived quality of the waveform: SIG (the speech), BAK "
    "(the background), OVRL (overall), on a 1-5 scale.",
    "",
)


def _mean_or_nan(value) -> float:
    return float("nan") if value is None else float(value)


def listen_to(
    listen: Listen,
    waves: torch.Tensor,
    sample_rate: int,
    targets: torch.Tensor | None = None,
    ok: torch.Tensor | None = None,
) -> dict:
    """What the waveform judges say about a batch: {n, n_heard, asr_accuracy, asr_no_answer, dnsmos_sig,
    dnsmos_bak, dnsmos_ovrl, seconds_per_clip}.

    The judges hear each row as `write_wav` stores it (16-bit PCM). Only rows with `ok` True are played. `asr_accuracy` is over all n rows (a row not played is a
    miss) and None without targets; the DNSMOS figures are means over the rows played (NaN if none).
    """
    n = len(waves)
    ok = torch.ones(n, dtype=torch.bool) if ok is None else ok.to(torch.bool).cpu()
    heard = int(ok.sum())
    out: dict = {"n": n, "n_heard": heard, "asr_accuracy": None if targets is None else 0.0, "asr_no_answer": None,
                 "dnsmos_sig": float("nan"), "dnsmos_bak": float("nan"), "dnsmos_ovrl": float("nan"), "seconds_per_clip": None}
    if heard == 0:
        return out
    summary = listen(as_written(waves[ok], sample_rate), sample_rate, None if targets is None else targets.cpu()[ok])
    if targets is not None:
        acc = summary.get("asr_accuracy")
        out["asr_accuracy"] = None if acc is None else float(acc) * heard / n
    out["asr_no_answer"] = summary.get("asr_no_answer")
    out.update(dnsmos_sig=_mean_or_nan(summary["sig"]), dnsmos_bak=_mean_or_nan(summary["bak"]), dnsmos_ovrl=_mean_or_nan(summary["ovrl"]))
    seconds = summary.get("seconds_per_clip")
    out["seconds_per_clip"] = seconds.get("total") if isinstance(seconds, dict) else seconds
    if "settings" in summary:
        out["settings"] = summary["settings"]
    return out


def real_clip_subset(clips: Sequence[Clip], per_digit: int | None) -> list[Clip]:
    """Up to `per_digit` clips of every digit (all of them when None), chosen by rule, not by result:
    lowest take first, speakers in turn starting from a different one for each digit."""
    chosen: list[Clip] = []
    for d in sorted({c.digit for c in clips}):
        mine = sorted((c for c in clips if c.digit == d), key=lambda c: (c.take, (FSDD_SPEAKERS.index(c.speaker) - d) % len(FSDD_SPEAKERS), c.path.name))
        chosen += mine if per_digit is None else mine[:per_digit]
    return chosen


def fmt_outside(figures: dict | None, key: str) -> str:
    """One outside figure for a markdown table ("-" when missing)."""
    value = None if figures is None else figures.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.1f}%" if key == "asr_accuracy" else f"{value:.2f}"


def strip_settings(figures: dict) -> dict:
    """A system's figures without the judges' settings (those are stored once per report)."""
    return {k: v for k, v in figures.items() if k != "settings"}
