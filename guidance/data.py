"""Speech data: the Free Spoken Digit Dataset (FSDD) and Speech Commands / SC09.

FSDD is read from a local directory (argument, then `SPEECHGUIDE_FSDD_DIR`, then the user cache)
and can be downloaded from its public source for users with internet. Splits follow FSDD's
official protocol: takes 0-4 are the test set and never reach training; a validation set is
carved out of the training takes (5-9 by default) for calibration and tuning.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import soundfile
import torch
import torchaudio

from guidance.features import FeatureSpec, GriffinLimVocoder, LogMel, Vocoder, fit_length
from guidance.files import private_temp_path

DIGITS = [str(d) for d in range(10)]
FSDD_SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
FSDD_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.tar.gz"
FSDD_ENV = "SPEECHGUIDE_FSDD_DIR"
SPLITS = ("train", "val", "test")
_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")


@dataclass(frozen=True)
class Clip:
    path: Path
    digit: int
    speaker: str
    take: int


@dataclass(frozen=True)
class SplitRule:
    """Which takes go where. Test takes are FSDD's official ones and are checked, not configured."""

    test_takes: tuple[int, int] = (0, 4)
    val_takes: tuple[int, int] = (5, 9)

    def split_of(self, take: int) -> str:
        if self.test_takes[0] <= take <= self.test_takes[1]:
            return "test"
        if self.val_takes[0] <= take <= self.val_takes[1]:
            return "val"
        return "train"


def default_cache_dir() -> Path:
    return Path(os.environ.get("SPEECHGUIDE_CACHE", Path.home() / ".cache" / "speechguide"))


def resolve_fsdd_root(root: str | os.PathLike | None = None, download: bool = False) -> Path:
    """Find FSDD on disk: explicit root, then $SPEECHGUIDE_FSDD_DIR, then the user cache.

    With `download=True` a missing copy is fetched from the public GitHub release into the cache.
    """
    candidates = [Path(root)] if root else []
    if os.environ.get(FSDD_ENV):
        candidates.append(Path(os.environ[FSDD_ENV]))
    cached = default_cache_dir() / "fsdd"
    candidates.append(cached)
    for c in candidates:
        if (c / "recordings").is_dir() or any(c.glob("*_*_*.wav")):
            return c
    if download:
        return download_fsdd(cached)
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"FSDD not found (tried {tried}); set {FSDD_ENV} to a local copy or pass --download"
    )


def download_fsdd(dest: Path, url: str = FSDD_URL) -> Path:
    """Download and unpack FSDD's recordings into `dest/recordings` (atomic: a temp dir, then rename)."""
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / "recordings.partial"
    tmp.mkdir(exist_ok=True)
    with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 (fixed public URL)
        data = resp.read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if member.isfile() and "/recordings/" in member.name and _NAME.match(name):
                src = tar.extractfile(member)
                assert src is not None
                (tmp / name).write_bytes(src.read())
    tmp.rename(dest / "recordings")
    return dest


def list_fsdd(root: Path) -> list[Clip]:
    folder = root / "recordings" if (root / "recordings").is_dir() else root
    clips = []
    for p in sorted(folder.glob("*.wav")):
        m = _NAME.match(p.name)
        if m:
            clips.append(Clip(p, int(m.group(1)), m.group(2), int(m.group(3))))
    if not clips:
        raise FileNotFoundError(f"no FSDD recordings named digit_speaker_take.wav in {folder}")
    return clips


def fsdd_split(clips: Iterable[Clip], split: str, rule: SplitRule = SplitRule()) -> list[Clip]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [c for c in clips if rule.split_of(c.take) == split]


def load_wave(path: Path | io.BytesIO, sample_rate: int) -> torch.Tensor:
    """Read a WAV (a file, or its bytes in memory) as mono float32 at `sample_rate`, peak-normalized to 0.9."""
    data, sr = soundfile.read(path if isinstance(path, io.BytesIO) else str(path), dtype="float32", always_2d=True)
    wave = torch.from_numpy(data.mean(axis=1))
    if sr != sample_rate:
        wave = torchaudio.functional.resample(wave, sr, sample_rate)
    peak = wave.abs().max().clamp_min(1e-8)
    return wave / peak * 0.9


def load_waves(clips: Sequence[Clip], spec: FeatureSpec) -> torch.Tensor:
    """All clips as one (N, spec.num_samples) tensor, each centred and zero-padded."""
    return torch.stack([fit_length(load_wave(c.path, spec.sample_rate), spec.num_samples) for c in clips])


def fit_normalization(clips: Sequence[Clip], spec: FeatureSpec) -> FeatureSpec:
    """Measure the mean and std of log-Mel values on `clips` and return the spec that uses them."""
    raw = LogMel(FeatureSpec(**{**spec.to_dict(), "mean": 0.0, "std": 1.0})).unnormalized(
        load_waves(clips, spec)
    )
    return FeatureSpec(**{**spec.to_dict(), "mean": round(raw.mean().item(), 4), "std": round(raw.std().item(), 4)})


@dataclass
class FeatureSet:
    """Normalized log-Mels with their labels, ready for training or evaluation."""

    mels: torch.Tensor  # (N, 1, n_mels, frames)
    digits: torch.Tensor  # (N,)
    speakers: torch.Tensor  # (N,) index into FSDD_SPEAKERS
    takes: torch.Tensor  # (N,)

    def __len__(self) -> int:
        return len(self.digits)


def feature_cache_path(split: str, spec: FeatureSpec, clips: Sequence[Clip], variant: str, cache_dir: Path | None) -> Path:
    key = hashlib.sha256(
        (spec.to_json() + variant + "|" + "|".join(f"{c.path.name}:{c.path.stat().st_size}" for c in clips)).encode()
    ).hexdigest()[:16]
    return (cache_dir or default_cache_dir() / "features") / f"fsdd-{split}{variant}-{key}.pt"


def _cached(cache: Path, compute) -> FeatureSet:
    if cache.exists():
        return FeatureSet(**torch.load(cache, weights_only=True))
    fs = compute()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = private_temp_path(cache)
    torch.save(dict(mels=fs.mels, digits=fs.digits, speakers=fs.speakers, takes=fs.takes), tmp)
    tmp.replace(cache)
    return fs


def _labelled(clips: Sequence[Clip], mels: torch.Tensor) -> FeatureSet:
    return FeatureSet(
        mels=mels,
        digits=torch.tensor([c.digit for c in clips]),
        speakers=torch.tensor([FSDD_SPEAKERS.index(c.speaker) for c in clips]),
        takes=torch.tensor([c.take for c in clips]),
    )


@torch.no_grad()
def clip_features(clips: Sequence[Clip], spec: FeatureSpec) -> FeatureSet:
    """Labelled log-Mels of some clips, uncached: what `fsdd_features` caches for a whole split."""
    return _labelled(clips, LogMel(spec)(load_waves(clips, spec)))


def fsdd_features(
    split: str,
    spec: FeatureSpec,
    root: str | os.PathLike | None = None,
    cache_dir: Path | None = None,
    rule: SplitRule = SplitRule(),
) -> FeatureSet:
    """Features of one FSDD split, cached on disk keyed by the feature spec and the file list."""
    clips = fsdd_split(list_fsdd(resolve_fsdd_root(root)), split, rule)
    return _cached(feature_cache_path(split, spec, clips, "", cache_dir), lambda: clip_features(clips, spec))


def fsdd_vocoded_features(
    split: str,
    spec: FeatureSpec,
    root: str | os.PathLike | None = None,
    cache_dir: Path | None = None,
    rule: SplitRule = SplitRule(),
    batch: int = 64,
    vocoder: Vocoder | None = None,
) -> FeatureSet:
    """Features of vocoder round trips (mel -> vocoder -> mel) of one split, cached per vocoder.

    Generated speech always passes through the vocoder; these let judges hear that artefact on
    real speech and give the evaluation a vocoder floor. Griffin-Lim when no vocoder is given.
    """
    clips = fsdd_split(list_fsdd(resolve_fsdd_root(root)), split, rule)
    vocoder = vocoder if vocoder is not None else GriffinLimVocoder(spec)
    identity = getattr(vocoder, "description", {}).get("sha256", "")[:16]
    variant = "-vocoded" + (f"-{identity}" if identity else "")  # Griffin-Lim keeps the original cache name

    @torch.no_grad()
    def compute() -> FeatureSet:
        clean = fsdd_features(split, spec, root, cache_dir, rule).mels
        from guidance.vocoders import vocoder_device  # guidance.vocoders needs nothing from here

        front = LogMel(spec)
        device = vocoder_device(vocoder)
        mels = torch.cat([front(vocoder(clean[i : i + batch].to(device)).cpu()) for i in range(0, len(clean), batch)])
        return _labelled(clips, mels)

    return _cached(feature_cache_path(split, spec, clips, variant, cache_dir), compute)


SC09_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def sc09_clips(root: str | os.PathLike, subset: str | None = None) -> list[tuple[Path, int, str]]:
    """The SC09 subset (the ten digit words) of Speech Commands from a local root.

    Uses torchaudio's SPEECHCOMMANDS for the file layout and official validation/testing lists;
    nothing is downloaded. Returns (path, digit, speaker_id) triples.
    """
    from torchaudio.datasets import SPEECHCOMMANDS

    root = Path(root)
    folder = "SpeechCommands"
    if not (root / folder).is_dir():
        raise FileNotFoundError(f"no {folder}/ folder under {root}")
    version_dirs = [p.name for p in (root / folder).iterdir() if p.is_dir()]
    if not version_dirs:
        raise FileNotFoundError(f"no Speech Commands version folder under {root / folder}")
    ds = SPEECHCOMMANDS(str(root), url=version_dirs[0], folder_in_archive=folder, download=False, subset=subset)
    out = []
    for rel in ds._walker:  # the dataset's own file list (paths), honouring the subset lists
        path = Path(rel)
        word = path.parent.name
        if word in SC09_WORDS:
            out.append((path, SC09_WORDS.index(word), path.name.split("_nohash_")[0]))
    return out


def sc09_waves(root: str | os.PathLike, spec: FeatureSpec, subset: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SC09 waveforms (N, spec.num_samples) and digit labels (N,)."""
    items = sc09_clips(root, subset)
    if not items:
        raise FileNotFoundError(f"no SC09 clips under {root}")
    waves = torch.stack([fit_length(load_wave(p, spec.sample_rate), spec.num_samples) for p, _, _ in items])
    return waves, torch.tensor([d for _, d, _ in items])


def wav_bytes(wave: torch.Tensor | np.ndarray, sample_rate: int) -> bytes:
    """A mono wave as the bytes of a 16-bit PCM WAV file: clipped to [-1, 1], quantized by libsndfile."""
    arr = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
    buf = io.BytesIO()
    soundfile.write(buf, np.clip(arr, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def write_wav(path: Path, wave: torch.Tensor | np.ndarray, sample_rate: int) -> None:
    """16-bit PCM mono WAV, written to a temp file then renamed so no half-written file remains."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(wav_bytes(wave, sample_rate))
    tmp.replace(path)


def as_written(waves: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Waves (n, samples) exactly as `write_wav` stores them (clipped, 16-bit), back as float32.

    Judges that hear waveforms must hear the file a user gets: an outside recognizer's verdict on a
    generated clip can flip on the 16-bit rounding of its near-silent stretches (on 200 generated
    samples, 0.695 digit accuracy on the float waves, 0.655 on the same waves written as WAVs)."""
    rows = [torch.from_numpy(soundfile.read(io.BytesIO(wav_bytes(w, sample_rate)), dtype="float32")[0]) for w in waves]
    return torch.stack(rows) if rows else waves.detach().cpu().float()
