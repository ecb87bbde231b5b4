"""The one strict-model base of every typed config and request: unknown fields are refused (a misspelled
key must not quietly fall back to a default), NaN and infinities are refused, and values are frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Base of guidance profiles, Serve arguments and requests, and Tune settings; a subclass may tighten
    it further (the HTTP request refuses numbers sent as strings: `strict=True`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
