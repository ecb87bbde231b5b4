"""Everything a sweep is configured by, validated in one place (CLI, tests and restore read it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional

from pydantic import ConfigDict, Field, model_validator

from guidance.guides.kinds import CLASSIFIER_GUIDE_KINDS
from guidance.strict import StrictModel

SIDECAR = "speechguide_sweep.json"  # stored in the experiment directory, read back by --resume


def default_storage_path() -> str:
    """Local default under the project's working directory (ignored by git)."""
    return str(Path.cwd() / "runs" / "tune")


def _is_uri(path: str) -> bool:
    return "://" in path


class TuneSettings(StrictModel):
    model_config = ConfigDict(frozen=False)  # the strict base (`guidance.strict`), filled in field by field by the CLI

    trials: int = Field(20, ge=1, le=10_000)
    scheduler: Literal["asha", "fifo"] = "asha"
    objective: Literal["scalar", "multi"] = "scalar"
    guide: Literal[CLASSIFIER_GUIDE_KINDS] = "clean"  # type: ignore[valid-type]
    per_class: int = Field(10, ge=2, le=1000, description="generated samples per digit for a full trial")
    batch_per_class: int = Field(2, ge=2, le=1000, description="samples per digit in each reported batch")
    steps_min: int = Field(8, ge=1, le=1000)
    steps_max: int = Field(12, ge=1, le=1000)
    base_steps: int = Field(10, ge=1, le=1000, description="steps of the default profile (the baseline)")
    seed: int = 0
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    max_concurrent: int = Field(2, ge=1)
    max_failures: int = Field(2, ge=0, description="retries of a failed trial")
    grace_period: int = Field(1, ge=1, description="ASHA: batches every trial gets")
    reduction_factor: int = Field(2, ge=2)
    storage_path: str = Field(default_factory=default_storage_path)
    name: Optional[str] = None
    mlflow: bool = True
    experiment: str = "speechguide-tune"
    tracking_uri: Optional[str] = None
    register_name: Optional[str] = None
    models_dir: Optional[str] = None
    data_dir: Optional[str] = None
    profile: Optional[str] = Field(None, description="base profile JSON (default: the guide kind's default profile)")
    start_from_default: bool = Field(True, description="evaluate the base profile as the first trial")
    accuracy_weight: float = 1.0
    fd_weight: float = 0.002
    diversity_weight: float = 0.1
    outside_asr_weight: float = Field(
        1.0, ge=0, description="weight of the outside recognizer's digit accuracy on the generated waves (0: not consulted)"
    )

    @model_validator(mode="after")
    def _check(self) -> "TuneSettings":
        if self.steps_min > self.steps_max:
            raise ValueError(f"steps_min ({self.steps_min}) must not exceed steps_max ({self.steps_max})")
        if not self.steps_min <= self.base_steps <= self.steps_max:
            raise ValueError(f"base_steps ({self.base_steps}) must lie in steps {self.steps_min}..{self.steps_max}")
        if self.per_class % self.batch_per_class:
            raise ValueError(f"per_class ({self.per_class}) must be a multiple of batch_per_class ({self.batch_per_class})")
        return self

    @property
    def batches(self) -> int:
        return self.per_class // self.batch_per_class

    def resolved(self) -> "TuneSettings":
        """Absolute paths everywhere: trials run in their own working directories on other processes."""
        from mlops.tracking import default_tracking_uri

        def absolute(p: Optional[str]) -> Optional[str]:
            return p if p is None or _is_uri(p) else str(Path(p).expanduser().resolve())

        uri = self.tracking_uri or default_tracking_uri()
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
        return self.model_copy(
            update={
                "storage_path": absolute(self.storage_path),
                "models_dir": absolute(self.models_dir),
                "data_dir": absolute(self.data_dir or os.environ.get("SPEECHGUIDE_FSDD_DIR")),
                "profile": absolute(self.profile),
                "tracking_uri": uri,
                "register_name": self.register_name or f"speechguide-profile-{self.guide}",
            }
        )
