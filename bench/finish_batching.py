"""What the Serve ingress's finishing merge (`step_merging.finish_wait_s`) rests on, measured on real clips.

Requests that end together share one scores call and one vocoder pass. That is worth it when a row costs
less in a batch than alone, and it is allowed only for a writer whose rows do not depend on the batch they
are written in (`guidance.vocoders.rows_independent`). For 16 log-Mels of FSDD test clips this prints, on
one torch thread (as a Serve replica and the ingress run):

- each vocoder's largest difference, in 16-bit PCM steps of the written WAV, between a row written in the
  batch of 16 and the same row written alone;
- ms per row at batch 1 and at batch 16 for the neural vocoder and the noisy classifier's probabilities.

    python bench/finish_batching.py [--reps 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from guidance.data import as_written, fsdd_features
from guidance.pipeline import ModelPaths, ModelSet
from guidance.vocoders import GRIFFIN_LIM, HARMONIC, NEURAL, load_vocoder, rows_independent

ROWS = 16


def per_row_ms(fn, x: torch.Tensor, reps: int) -> float:
    fn(x)  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(x)
    return (time.perf_counter() - t0) / reps / len(x) * 1e3


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    paths = ModelPaths()
    models = ModelSet.load(paths, "cpu")
    mels = fsdd_features("test", models.spec).mels[:ROWS]
    rate = models.spec.sample_rate
    print(f"{ROWS} FSDD test clips' log-Mels, 1 torch thread\n")
    print("| vocoder | rows independent (shares a pass) | max difference, batch of 16 vs alone (PCM steps) |\n|---|---|---|")
    for choice in (NEURAL, HARMONIC, GRIFFIN_LIM):
        vocoder = load_vocoder(choice, models.spec, paths.root)
        torch.manual_seed(0)
        together = as_written(vocoder(mels), rate)
        alone = []
        for row in mels:
            torch.manual_seed(0)  # Griffin-Lim draws its phase from the global generator: the same seed for each
            alone.append(as_written(vocoder(row[None]), rate))
        steps = float((together - torch.cat(alone)).abs().max()) * 32768
        print(f"| {choice} | {rows_independent(vocoder)} | {steps:.0f} |")
    guide = models.guides["noisy"]
    print("\n| ms per row | batch 1 | batch 16 | batch 16 / batch 1 |\n|---|---|---|---|")
    for name, fn in (("neural vocoder", models.vocoder), ("noisy classifier probabilities", guide.probabilities)):
        one, many = per_row_ms(fn, mels[:1], args.reps * 4), per_row_ms(fn, mels, args.reps)
        print(f"| {name} | {one:.1f} | {many:.1f} | {many / one:.2f} |")


if __name__ == "__main__":
    main()
