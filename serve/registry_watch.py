"""What the ingress knows of the MLflow registry: profiles by alias, guide references, kept current.

No Ray here: `refresh()` is a blocking call (the ingress runs it in a worker thread on a timer) that
re-resolves every alias and reference and swaps in what moved. Readers take a whole mapping at a
time and the mappings are replaced, never mutated, so a request that picked a profile keeps it to
the end while the next request sees the new one: an alias move causes no downtime and never mixes
two profiles in one request. A registry that cannot be reached leaves the last good state in place
and is reported in `describe()`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

from guidance.guides import GuidanceProfile
from guidance.guides.kinds import CLASSIFIER_GUIDE_KINDS
from mlops.registry import RegistryError, VersionInfo, load_profile_version, parse_ref, resolve
from serve.config import RegistryArgs

log = logging.getLogger("ray.serve")
MAX_CACHED_REFS = 64


@dataclass(frozen=True)
class LoadedProfile:
    profile: GuidanceProfile
    name: str
    version: int
    alias: str

    def source(self) -> dict:
        return {"name": self.name, "version": self.version, "alias": self.alias}


def redact(uri: Optional[str]) -> Optional[str]:
    """A URI without user:password, fit to show in a response."""
    if not uri or "@" not in uri or "://" not in uri:
        return uri
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))


class RegistryWatch:
    """Profiles (`profile_name@alias` for each configured alias) and guide refs (`NAME@ALIAS`) -> versions."""

    def __init__(self, args: RegistryArgs) -> None:
        self.args = args
        self.uri = args.tracking_uri
        self.profiles: dict[tuple[str, str], LoadedProfile] = {}  # (guide kind or "", alias) -> profile
        self.refs: dict[str, VersionInfo] = {}
        self.errors: dict[str, str] = {}
        self.reloads = 0
        self.last_refresh: Optional[float] = None
        self._lock = threading.Lock()

    def refresh(self) -> list[str]:
        """Re-resolve every alias and ref; load what moved. Returns one line per change (for the log)."""
        changes: list[str] = []
        errors: dict[str, str] = {}
        profiles = dict(self.profiles)
        for kind, name in self.profile_names():
            for alias in self.args.profile_aliases:
                key = f"{name}@{alias}"
                try:
                    info = resolve(name, alias, tracking_uri=self.uri)
                    current = profiles.get((kind, alias))
                    if current is None or current.version != info.version:
                        profile, info = load_profile_version(name, info.version, tracking_uri=self.uri)
                        profiles[(kind, alias)] = LoadedProfile(profile, info.name, info.version, alias)
                        changes.append(f"{key}: version {current.version if current else None} -> {info.version}")
                except Exception as exc:  # unreachable server, unknown alias, bad artifact: keep serving the last good one
                    errors[key] = _one_line(exc)
        configured = [*self.args.guides.values(), *([self.args.denoiser] if self.args.denoiser else [])]
        refs = {**{r: None for r in configured}, **self.refs}
        resolved: dict[str, VersionInfo] = {}
        for ref in refs:
            try:
                resolved[ref] = self._resolve(ref)
                old = self.refs.get(ref)
                if old is not None and old.version != resolved[ref].version:
                    changes.append(f"{ref}: version {old.version} -> {resolved[ref].version}")
            except Exception as exc:
                errors[ref] = _one_line(exc)
                if ref in self.refs:
                    resolved[ref] = self.refs[ref]  # keep the last good version
        with self._lock:
            self.profiles = profiles
            self.refs = {**self.refs, **resolved}
            self.errors = errors
            self.reloads += len(changes)
            self.last_refresh = time.time()
        return changes

    def _resolve(self, ref: str) -> VersionInfo:
        name, alias = parse_ref(ref)
        return resolve(name, alias, tracking_uri=self.uri)

    def resolve_ref(self, ref: str) -> VersionInfo:
        """The version a guide reference points at now (cached until the next refresh re-resolves it)."""
        known = self.refs.get(ref)
        if known is not None:
            return known
        info = self._resolve(ref)  # RegistryError for an unknown model or alias
        with self._lock:
            if len(self.refs) < MAX_CACHED_REFS:
                self.refs = {**self.refs, ref: info}
        return info

    def profile_names(self) -> list[tuple[str, str]]:
        """(guide kind, registered name): one name for all kinds, or one per kind when the name has `{guide}`."""
        if "{guide}" in self.args.profile_name:
            return [(kind, self.args.profile_name.replace("{guide}", kind)) for kind in CLASSIFIER_GUIDE_KINDS]
        return [("", self.args.profile_name)]

    def profile(self, alias: str, guide_kind: str) -> Optional[LoadedProfile]:
        """The loaded profile a request of `guide_kind` gets for `alias` (None if not loaded)."""
        kind = guide_kind if "{guide}" in self.args.profile_name else ""
        return self.profiles.get((kind, alias))

    def error_for(self, alias: str, guide_kind: str) -> str:
        name = self.args.profile_name.replace("{guide}", guide_kind)
        return self.errors.get(f"{name}@{alias}", "not loaded yet")

    def describe(self) -> dict:
        """For GET /v1/models: what is loaded, from where, and what failed on the last poll."""
        return {
            "tracking_uri": redact(self.uri),
            "poll_seconds": self.args.poll_seconds,
            "profile_name": self.args.profile_name,
            "profiles": {f"{p.name}@{a}": {"version": p.version, "profile_name": p.profile.name} for (_, a), p in sorted(self.profiles.items())},
            "guides": {
                kind: {"ref": ref, **({"name": self.refs[ref].name, "version": self.refs[ref].version} if ref in self.refs else {})}
                for kind, ref in self.args.guides.items()
            },
            "denoiser": (
                {"ref": self.args.denoiser, **({"name": self.refs[self.args.denoiser].name, "version": self.refs[self.args.denoiser].version} if self.args.denoiser in self.refs else {})}
                if self.args.denoiser
                else None
            ),
            "last_refresh_age_s": round(time.time() - self.last_refresh, 1) if self.last_refresh else None,
            "reloads": self.reloads,
            "errors": dict(self.errors),
        }


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:300]
    return text if isinstance(exc, RegistryError) else f"{type(exc).__name__}: {text}"
