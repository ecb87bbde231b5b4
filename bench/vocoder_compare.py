"""What each way back from the log-Mel to a waveform keeps of real speech, side by side in one run.

Real FSDD clips go through the project's front end and back:
- griffin-lim: least-squares inverse Mel + 64 Griffin-Lim iterations (the old default);
- griffin-lim-256: the same with 256 iterations (better phase recovery, same magnitude);
- oracle-magnitude: 64 Griffin-Lim iterations on the clip's true linear STFT magnitude, i.e. phase
  recovery alone, with nothing lost to the Mel filterbank (no vocoder can be given this in use);
- neural: the committed neural vocoder (or --vocoder FILE).
Each is scored against the originals by the outside judges (pocketsphinx digit ASR, DNSMOS) and by
the log-Mel and multi-resolution STFT distances, with CPU milliseconds per 1 s clip.

    .venv/bin/python bench/vocoder_compare.py --split val --every 1 --json reports/vocoder/compare-val.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torchaudio

from guidance.data import fsdd_split, list_fsdd, load_waves, resolve_fsdd_root
from guidance.features import FeatureSpec, GriffinLimVocoder, LogMel, fit_length
from guidance.models import read_metadata
from guidance.pipeline import ModelPaths
from guidance.vocoder_losses import multi_resolution_stft_loss
from guidance.vocoders import load_vocoder, vocode_batched
from outside_judges.report import judge_waves, summary_row


class OracleMagnitudeGriffinLim:
    """Griffin-Lim on the true STFT magnitude of the clip: the ceiling of phase recovery alone."""

    def __init__(self, spec: FeatureSpec, waves: torch.Tensor, n_iter: int = 64) -> None:
        self.spec, self.waves = spec, waves
        self.gl = torchaudio.transforms.GriffinLim(n_fft=spec.n_fft, hop_length=spec.hop_length, power=1.0, n_iter=n_iter)

    def __call__(self, rows: slice) -> torch.Tensor:
        window = torch.hann_window(self.spec.n_fft)
        mag = torch.stft(self.waves[rows], self.spec.n_fft, self.spec.hop_length, window=window, return_complex=True).abs()
        torch.manual_seed(0)
        wave = fit_length(self.gl(mag), self.spec.num_samples)
        return wave / wave.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) * 0.9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--every", type=int, default=1, help="keep every n-th clip of the split")
    parser.add_argument("--vocoder", default="neural", help="neural vocoder file (default: the models directory's)")
    parser.add_argument("--systems", default="original,griffin-lim,griffin-lim-256,oracle-magnitude,neural")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    paths = ModelPaths()
    spec = FeatureSpec.from_dict(read_metadata(paths.path("denoiser"))["feature_spec"])
    clips = fsdd_split(list_fsdd(resolve_fsdd_root()), args.split)[:: args.every]
    waves = load_waves(clips, spec)
    digits = [c.digit for c in clips]
    front = LogMel(spec)
    mels = front(waves)
    makers = {
        "original": lambda: waves,
        "griffin-lim": lambda: vocode_batched(GriffinLimVocoder(spec), mels),
        "griffin-lim-256": lambda: vocode_batched(GriffinLimVocoder(spec, n_iter=256), mels),
        "oracle-magnitude": lambda: torch.cat([OracleMagnitudeGriffinLim(spec, waves)(slice(i, i + 64)) for i in range(0, len(waves), 64)]),
        "neural": lambda: vocode_batched(load_vocoder(args.vocoder, spec, paths.root), mels),
    }
    results = {}
    for name in args.systems.split(","):
        started, wall = time.process_time(), time.perf_counter()
        out = makers[name]()
        cpu_ms = (time.process_time() - started) * 1000 / len(waves) / spec.duration_s
        wall_ms = (time.perf_counter() - wall) * 1000 / len(waves) / spec.duration_s
        judged = summary_row(judge_waves(out, spec.sample_rate, digits))
        results[name] = {
            "asr_accuracy": judged["asr_accuracy"],
            "dnsmos_sig": judged["sig"],
            "dnsmos_bak": judged["bak"],
            "dnsmos_ovrl": judged["ovrl"],
            "log_mel_l1": float((front(out) - mels).abs().mean()),
            "mr_stft": float(multi_resolution_stft_loss(out, waves)),
            "cpu_ms_per_second_of_audio": None if name == "original" else round(cpu_ms, 1),
            "wall_ms_per_second_of_audio": None if name == "original" else round(wall_ms, 1),
        }
        print(name, json.dumps(results[name]), flush=True)
    header = "| system | ASR digit acc. | DNSMOS SIG | BAK | OVRL | log-Mel L1 | MR-STFT | CPU ms per 1 s | wall ms per 1 s |"
    print(f"\nFSDD {args.split} split, {len(waves)} clips\n\n{header}\n|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['asr_accuracy']:.3f} | {r['dnsmos_sig']:.2f} | {r['dnsmos_bak']:.2f} | {r['dnsmos_ovrl']:.2f} "
            f"| {r['log_mel_l1']:.3f} | {r['mr_stft']:.3f} | {r['cpu_ms_per_second_of_audio'] or '-'} | {r['wall_ms_per_second_of_audio'] or '-'} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"split": args.split, "clips": len(waves), "results": results}, indent=2))


if __name__ == "__main__":
    main()
