"""Both outside judges over a set of clips: per-clip verdicts and one summary.

The summary is what gets compared across runs (real clips, vocoder round trips, generated audio):
ASR digit accuracy when the intended digits are known, mean DNSMOS SIG/BAK/OVRL, and the
seconds each judge spent per clip, so that a slow judge is visible before it is put in a loop.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from outside_judges.audio import read_wav
from outside_judges.digits_asr import AsrSettings, DigitRecognizer
from outside_judges.dnsmos import Dnsmos

_DIGIT_PREFIX = re.compile(r"^(\d)(?:[_\-.]|$)")


@dataclass(frozen=True)
class ClipVerdict:
    """What the judges said about one clip (target: the digit meant, when known)."""

    name: str
    target: int | None
    asr: int | None
    sig: float
    bak: float
    ovrl: float


@lru_cache(maxsize=1)
def default_recognizer() -> DigitRecognizer:
    """One recognizer per process: loading the acoustic model is the slow part of a small call."""
    return DigitRecognizer(AsrSettings())


@lru_cache(maxsize=1)
def default_dnsmos() -> Dnsmos:
    """One DNSMOS session per process, for the same reason."""
    return Dnsmos()


def digit_of_name(name: str) -> int | None:
    """The digit a file name starts with (`7_george_3.wav`, `7_000.wav`, `7.wav`), else None."""
    match = _DIGIT_PREFIX.match(Path(name).name)
    return int(match.group(1)) if match else None


def _judge(
    items: Sequence[tuple[str, torch.Tensor, int]],
    targets: Sequence[int | None],
    recognizer: DigitRecognizer | None,
    dnsmos: Dnsmos | None,
) -> dict:
    if not items:
        raise ValueError("no clips to judge")
    recognizer = recognizer or default_recognizer()
    dnsmos = dnsmos or default_dnsmos()
    asr_s = mos_s = 0.0
    verdicts = []
    for (name, wave, sr), target in zip(items, targets):
        t0 = time.perf_counter()
        said = recognizer.recognize(wave, sr)
        t1 = time.perf_counter()
        mos = dnsmos.score(wave, sr)
        t2 = time.perf_counter()
        asr_s, mos_s = asr_s + (t1 - t0), mos_s + (t2 - t1)
        verdicts.append(ClipVerdict(name, target, said, mos.sig, mos.bak, mos.ovrl))
    n = len(verdicts)
    known = [v for v in verdicts if v.target is not None]
    return {
        "n": n,
        "n_with_target": len(known),
        "asr_accuracy": float(np.mean([v.asr == v.target for v in known])) if known else None,
        "asr_no_answer": sum(v.asr is None for v in verdicts),
        "asr_accuracy_per_digit": {
            d: float(np.mean([v.asr == d for v in known if v.target == d]))
            for d in sorted({v.target for v in known})
        },
        "sig": float(np.mean([v.sig for v in verdicts])),
        "bak": float(np.mean([v.bak for v in verdicts])),
        "ovrl": float(np.mean([v.ovrl for v in verdicts])),
        "seconds_per_clip": {"asr": asr_s / n, "dnsmos": mos_s / n, "total": (asr_s + mos_s) / n},
        "settings": {
            "asr": recognizer.settings.to_dict(),
            "dnsmos": {"windows": dnsmos.windows, "normalize": dnsmos.normalize},
        },
        "clips": [asdict(v) for v in verdicts],
    }


def judge_waves(
    waves: torch.Tensor | Sequence[torch.Tensor],
    sample_rate: int,
    targets: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
    recognizer: DigitRecognizer | None = None,
    dnsmos: Dnsmos | None = None,
) -> dict:
    """Judge clips at `sample_rate`: a (n, samples) batch, or a list of 1-D waves of any lengths.

    `targets` are the digits meant (None: no ASR accuracy). Returns {"n", "n_with_target",
    "asr_accuracy", "asr_no_answer", "asr_accuracy_per_digit", "sig", "bak", "ovrl",
    "seconds_per_clip", "settings", "clips": [per-clip verdicts]}.
    """
    if isinstance(waves, torch.Tensor):
        if waves.dim() != 2:
            raise ValueError(f"waves must be (n, samples), got shape {tuple(waves.shape)}")
        rows = list(waves.unbind(0))
    else:
        rows = list(waves)
    n = len(rows)
    if targets is not None and len(targets) != n:
        raise ValueError(f"{len(targets)} targets for {n} waves")
    if names is not None and len(names) != n:
        raise ValueError(f"{len(names)} names for {n} waves")
    if targets is not None and any(not 0 <= int(t) <= 9 for t in targets):
        raise ValueError(f"targets must be digits 0-9, got {list(targets)}")
    names = list(names) if names is not None else [f"clip_{i:04d}" for i in range(n)]
    items = [(names[i], rows[i], sample_rate) for i in range(n)]
    return _judge(items, [int(t) for t in targets] if targets is not None else [None] * n, recognizer, dnsmos)


def wav_files(paths: Iterable[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """WAV files from files and folders (a folder with no WAVs but a `recordings/` uses that, as FSDD)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            pattern = "**/*.wav" if recursive else "*.wav"
            inside = sorted(p.glob(pattern))
            if not inside and (p / "recordings").is_dir():
                inside = sorted((p / "recordings").glob(pattern))
            if not inside:
                raise FileNotFoundError(f"no .wav files in {p}")
            found += inside
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return found


def judge_wav_files(
    paths: Iterable[str | os.PathLike],
    recursive: bool = False,
    recognizer: DigitRecognizer | None = None,
    dnsmos: Dnsmos | None = None,
) -> dict:
    """Judge WAV files (and folders of them) at their own rates; targets from leading digits in names.

    Files whose names do not start with a digit are still scored; they just do not count toward
    the ASR accuracy (see "n_with_target").
    """
    files = wav_files(paths, recursive)
    items = []
    for f in files:
        wave, sr = read_wav(f)
        items.append((str(f), wave, sr))
    return _judge(items, [digit_of_name(f.name) for f in files], recognizer, dnsmos)


def judge_wav_dir(
    path: str | os.PathLike,
    recursive: bool = False,
    recognizer: DigitRecognizer | None = None,
    dnsmos: Dnsmos | None = None,
) -> dict:
    """Judge every WAV in a folder; names starting with a digit (`{digit}_...wav`) give the target."""
    if not Path(path).is_dir():
        raise NotADirectoryError(f"not a folder: {path}")
    return judge_wav_files([path], recursive, recognizer, dnsmos)


def summary_row(report: dict) -> dict:
    """The report without its per-clip list: what a table or a tracking run wants."""
    return {k: v for k, v in report.items() if k != "clips"}


def listen(waves: torch.Tensor, sample_rate: int, targets: torch.Tensor | Sequence[int] | None = None) -> dict:
    """Both judges as the evaluations' `listen` hook (`guidance.listening.Listen`): the summary row of
    `judge_waves` with this process's shared recognizer and DNSMOS session."""
    digits = None if targets is None else [int(t) for t in targets]
    return summary_row(judge_waves(waves, sample_rate, digits))


def ready() -> None:
    """Load both judges now (raises `MissingJudgeDependency` when a package is missing), so a command
    fails before it spends minutes sampling rather than after."""
    default_recognizer()
    default_dnsmos()
