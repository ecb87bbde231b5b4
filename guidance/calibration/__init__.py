"""Calibration of repurposed classifiers across noise levels: one temperature per sigma bin."""

from guidance.calibration.noise_levels import (
    BinResult,
    CalibrationConfig,
    CalibrationResult,
    calibrate,
    calibrated_profile,
    sigma_edges,
)
from guidance.calibration.temperature import above_chance, accuracy, ece, fit_temperature, nll, reliability

__all__ = [
    "BinResult",
    "CalibrationConfig",
    "CalibrationResult",
    "above_chance",
    "accuracy",
    "calibrate",
    "calibrated_profile",
    "ece",
    "fit_temperature",
    "nll",
    "reliability",
    "sigma_edges",
]
