"""Networks: U-Net denoiser, log-Mel classifiers (clean and noise-conditioned), judges; model files."""

from guidance.models.checkpoint import ModelFile, count_parameters, load_model, read_metadata, save_model
from guidance.models.classifier import ClassifierConfig, ClassifierOutput, LogMelClassifier
from guidance.models.judge import JudgeConfig, TDNNJudge
from guidance.models.unet import UNet, UNetConfig

__all__ = [
    "ClassifierConfig",
    "ClassifierOutput",
    "JudgeConfig",
    "LogMelClassifier",
    "ModelFile",
    "TDNNJudge",
    "UNet",
    "UNetConfig",
    "count_parameters",
    "load_model",
    "read_metadata",
    "save_model",
]
