"""Write a calibration's figures: calibration.json, calibration.md, both profiles and the plots."""

from __future__ import annotations

import json
from pathlib import Path

from guidance.calibration.noise_levels import CalibrationResult, calibrated_profile
from guidance.calibration.plots import reliability_diagram, sigma_curves
from guidance.guides.profile import GuidanceProfile


def _f(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown_table(result: CalibrationResult) -> str:
    """One row per sigma bin; 'after' figures are cross-fitted (held-out fold)."""
    lines = [
        "| sigma bin | n | clean acc. | noisy acc. | T | NLL before | NLL after | ECE before | ECE after | cos T=1 | cos T |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in result.bins:
        mark = "" if b.above_chance else " (chance)"
        lines.append(
            f"| {b.sigma_lo:.3g}-{b.sigma_hi:.3g}{mark} | {b.n} | {b.accuracy:.1%} | "
            f"{'-' if b.noisy_accuracy is None else f'{b.noisy_accuracy:.1%}'} | {b.temperature:.3g} | "
            f"{_f(b.nll_before)} | {_f(b.nll_after)} | {_f(b.ece_before)} | {_f(b.ece_after)} | "
            f"{_f(b.grad_cosine)} | {_f(b.grad_cosine_calibrated)} |"
        )
    return "\n".join(lines)


def write_outputs(
    result: CalibrationResult, base: GuidanceProfile, out: Path, meta: dict | None = None, min_temperature: float | None = None
) -> dict[str, Path]:
    """Everything `speechguide calibrate` writes under `out`; returns name -> path."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"profile": calibrated_profile(base, result, min_temperature=min_temperature).save(out / "profile.json")}
    if result.sigma_hi_above_chance() is not None:
        windowed = calibrated_profile(base, result, window=True, min_temperature=min_temperature)
        paths["profile_window"] = windowed.save(out / "profile-window.json")
    data = {**(meta or {}), **result.to_dict()}
    paths["calibration"] = out / "calibration.json"
    paths["calibration"].write_text(json.dumps(data, indent=2))
    better = [b for b in result.bins if b.above_chance]
    summary = [
        "# Calibration across noise levels",
        "",
        f"Clean classifier on x0_hat = D(x_t, sigma), {result.folds}; chance = {result.chance:.0%}.",
        f"Bins above chance: {len(better)} of {len(result.bins)}; ECE lower after scaling in "
        f"{sum(b.ece_after < b.ece_before for b in better)} of them.",
        f"Highest sigma clearly above chance: {_f(result.sigma_hi_above_chance(), 3)}.",
        "",
        markdown_table(result),
        "",
    ]
    paths["summary"] = out / "calibration.md"
    paths["summary"].write_text("\n".join(summary))
    paths["reliability"] = reliability_diagram(result, out / "reliability.png")
    paths["curves"] = sigma_curves(result, out / "sigma-curves.png")
    return paths
