"""Hugging Face audio classifiers as guides, offline: tiny random models saved with save_pretrained.

The adapters are checked against the real feature extractors on a real FSDD clip; the guide runs
inside guided sampling and through the CLI. Nothing here touches the network (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def _offline():
    """No network for this module: the env for anything imported from here on, and huggingface_hub's
    constant in case an earlier test module imported it before the env was set."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        for key, value in OFFLINE_ENV.items():
            if key != "OMP_NUM_THREADS":
                mp.setenv(key, value)
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


def _labels(names: list[str]) -> dict:
    return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def save_tiny_wav2vec2(directory: Path, names: list[str] = WORDS) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 4),
        conv_kernel=(10, 4), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, classifier_proj_size=8, **_labels(names),
    )
    Wav2Vec2ForSequenceClassification(cfg).save_pretrained(directory)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=False).save_pretrained(directory)
    return directory


def save_tiny_ast(directory: Path, names: list[str] = WORDS) -> Path:
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    torch.manual_seed(0)
    cfg = ASTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_length=128, num_mel_bins=128, **_labels(names))
    ASTForAudioClassification(cfg).save_pretrained(directory)
    ASTFeatureExtractor(max_length=128).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-models")
    return {
        "wav2vec2": save_tiny_wav2vec2(root / "wav2vec2"),
        "ast": save_tiny_ast(root / "ast"),
        "ast-partial": save_tiny_ast(root / "ast-partial", ["yes", "no", "zero", "one", "two"]),
    }


@pytest.fixture(scope="module")
def real_clip(fsdd_root: Path, spec) -> tuple[torch.Tensor, torch.Tensor]:
    """One validation clip at the project's rate and length, and its normalized log-Mel (1, 1, M, T)."""
    from guidance.data import fsdd_split, list_fsdd, load_wave
    from guidance.features import LogMel, fit_length

    clip = fsdd_split(list_fsdd(fsdd_root), "val")[0]
    wave = fit_length(load_wave(clip.path, spec.sample_rate), spec.num_samples)
    return wave, LogMel(spec)(wave[None])


def test_label_mapping_builtin_user_and_errors(tmp_path):
    from guidance.guides.hf import HFGuideError, map_labels, parse_label_map

    assert map_labels(dict(enumerate(WORDS))) == {str(i): i for i in range(10)}
    sc = dict(enumerate(["backward", "Seven", "yes", "7x", "_unknown_", "two"]))
    assert map_labels(sc) == {"2": 5, "7": 1}  # case-insensitive words, the rest ignored
    assert map_labels(sc, parse_label_map("yes=1, 7x=7, Seven=seven")) == {"1": 2, "2": 5, "7": 3, "seven": 1}
    (tmp_path / "map.json").write_text(json.dumps({"backward": 4}))
    assert map_labels(sc, parse_label_map(str(tmp_path / "map.json")))["4"] == 0
    with pytest.raises(HFGuideError, match="not a label of the model"):
        map_labels(sc, {"eleven": "1"})
    with pytest.raises(HFGuideError, match="both map to target '7'"):
        map_labels(sc, {"7x": "7"})
    with pytest.raises(HFGuideError, match="none of the model's labels"):
        map_labels({0: "cat", 1: "dog"})
    for bad in ("seven", "=7", "seven=", str(tmp_path / "absent.json")):
        with pytest.raises(HFGuideError):
            parse_label_map(bad)


def test_guides_load_from_directories_and_map_labels(hf_dirs, spec):
    from guidance.guides.hf import HFAudioGuide, HFGuideError
    from guidance.guides.hf_frontends import KaldiFbankFrontEnd, WaveformFrontEnd

    w2v = HFAudioGuide.from_pretrained(hf_dirs["wav2vec2"], spec)
    ast = HFAudioGuide.from_pretrained(hf_dirs["ast"], spec)
    assert isinstance(w2v.frontend, WaveformFrontEnd) and isinstance(ast.frontend, KaldiFbankFrontEnd)
    assert w2v.labels == ast.labels == [str(d) for d in range(10)]
    assert w2v.describe()["labels"]["7"] == "seven" and w2v.label_index("7") == 7
    partial = HFAudioGuide.from_pretrained(hf_dirs["ast-partial"], spec)
    assert partial.labels == ["0", "1", "2"] and partial.class_index.tolist() == [2, 3, 4]
    with pytest.raises(KeyError, match="no label for digit=7"):
        partial.label_index("7")
    assert HFAudioGuide.from_pretrained(hf_dirs["ast-partial"], spec, label_map="yes=7").label_index("7") == 3
    with pytest.raises(HFGuideError, match="does not exist"):
        HFAudioGuide.from_pretrained(hf_dirs["ast"].parent / "missing", spec)
    with pytest.raises(HFGuideError, match="hub"):
        HFAudioGuide.from_pretrained("speechguide-test/no-such-model", spec)


def test_unsupported_feature_extractor_is_refused(spec):
    from transformers import WhisperFeatureExtractor

    from guidance.guides.hf_frontends import UnsupportedFeatureExtractor, frontend_for

    with pytest.raises(UnsupportedFeatureExtractor, match="WhisperFeatureExtractor is not supported"):
        frontend_for(WhisperFeatureExtractor(), spec)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def test_ast_fbank_adapter_matches_the_real_extractor(hf_dirs, real_clip, spec):
    from transformers import AutoFeatureExtractor

    from guidance.guides.hf_frontends import frontend_for

    wave, mel = real_clip
    extractor = AutoFeatureExtractor.from_pretrained(hf_dirs["ast"], local_files_only=True)
    ref = extractor(wave.numpy(), sampling_rate=16000, return_tensors="pt")["input_values"]
    out = frontend_for(extractor, spec)(mel)
    assert out.shape == ref.shape == (1, 128, 128) and out.dtype == ref.dtype == torch.float32
    n = frontend_for(extractor, spec).frames  # 99 real frames, then the extractor's zero padding
    assert torch.allclose(out[:, n:], ref[:, n:])
    below_4k = 96  # Kaldi Mel bins below 4 kHz (128 bins over 20 Hz..8 kHz)
    # `python -m guidance.guides.hf_frontends val 300` (all validation clips): correlation 0.908 mean
    # (min 0.851) on all bins, 0.972 (min 0.932) below 4 kHz where FSDD has signal (above it the
    # adapter writes the floor, the extractor the resampler's leakage); MAE 0.137 (max 0.185).
    # This clip: 0.885, 0.974, 0.175.
    assert _corr(out[0, :n], ref[0, :n]) > 0.85
    assert _corr(out[0, :n, :below_4k], ref[0, :n, :below_4k]) > 0.95
    assert (out[0, :n] - ref[0, :n]).abs().mean() < 0.25


def test_waveform_adapter_matches_the_real_extractor(hf_dirs, real_clip, spec):
    import torchaudio
    from transformers import AutoFeatureExtractor, Wav2Vec2FeatureExtractor

    from guidance.features import LogMel
    from guidance.guides.hf_frontends import WaveformFrontEnd, frontend_for

    wave, mel = real_clip
    extractor = AutoFeatureExtractor.from_pretrained(hf_dirs["wav2vec2"], local_files_only=True)
    ref = extractor(wave.numpy(), sampling_rate=16000, return_tensors="pt")["input_values"]
    out = frontend_for(extractor, spec)(mel)
    assert out.shape == ref.shape and out.dtype == ref.dtype == torch.float32
    assert abs(float(out.mean())) < 1e-4 and abs(float(out.std(unbiased=False)) - 1) < 1e-3
    # The rebuilt waveform, analysed again, has the input's spectrogram where FSDD has signal
    # (same command: 0.989 mean, 0.955 min over the validation clips; this clip 0.981).
    raw = WaveformFrontEnd(spec, do_normalize=False)(mel)
    below_4k = 48  # of the project's 64 HTK Mel bands over 0..8 kHz
    assert _corr(LogMel(spec)(raw)[..., :below_4k, :], mel[..., :below_4k, :]) > 0.95
    eight_k = Wav2Vec2FeatureExtractor(sampling_rate=8000, do_normalize=True)
    ref8 = eight_k(torchaudio.functional.resample(wave, 16000, 8000).numpy(), sampling_rate=8000, return_tensors="pt")["input_values"]
    assert frontend_for(eight_k, spec)(mel).shape == ref8.shape


@pytest.mark.parametrize("kind", ["wav2vec2", "ast"])
def test_gradients_wrt_the_log_mel_are_finite_and_nonzero(kind, hf_dirs, real_clip, spec):
    from guidance.guides.hf import HFAudioGuide

    guide = HFAudioGuide.from_pretrained(hf_dirs[kind], spec)
    x = torch.cat([real_clip[1], torch.randn_like(real_clip[1])]).requires_grad_(True)
    logp = guide.log_prob(x, torch.ones(2), torch.tensor([7, 3]), torch.ones(2))
    (grad,) = torch.autograd.grad(logp.sum(), x)
    assert torch.isfinite(logp).all() and (logp < 0).all()
    assert torch.isfinite(grad).all() and (grad.flatten(1).abs().sum(1) > 0).all()


@pytest.mark.slow
def test_guided_sampling_end_to_end_with_the_tiny_denoiser(hf_dirs, tiny_models_dir, spec):
    from guidance.diffusion import init_state, sampler_step
    from guidance.guides import DEFAULT_PROFILES, GuidedDenoiser, GuideTerm
    from guidance.guides.hf import HFAudioGuide
    from guidance.models import load_model

    denoiser = load_model(tiny_models_dir / "denoiser-unet.safetensors", spec, "denoiser-unet").model
    profile = DEFAULT_PROFILES["hf"].with_sampler(steps=2, kind="euler", sigma_max=4.0)
    config = profile.sampler.to_config()
    noise = torch.randn(2, 1, spec.n_mels, spec.frames, generator=torch.Generator().manual_seed(0))
    results = {}
    for kind in ("wav2vec2", "ast", None):
        model = denoiser
        if kind:
            guide = HFAudioGuide.from_pretrained(hf_dirs[kind], spec)
            model = GuidedDenoiser(denoiser, [GuideTerm(guide, torch.tensor([7, 2]), profile.settings_for("digit"))])
        state = init_state(noise, config, seed=0)
        with torch.no_grad():
            while not state.done:
                state = sampler_step(model, state, config)
        results[kind] = state.x
    for kind in ("wav2vec2", "ast"):
        assert torch.isfinite(results[kind]).all()
        assert not torch.allclose(results[kind], results[None])  # the guide moved the samples


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **OFFLINE_ENV}
    return subprocess.run([sys.executable, "-m", "speechguide", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_generates_with_a_hf_guide(hf_dirs, tiny_models_dir, tmp_path):
    out = tmp_path / "out"
    r = run_cli("generate", "--hf-guide", str(hf_dirs["ast-partial"]), "--label-map", "yes=7", "--target", "digit=7",
                "--target", "digit=1", "--num", "1", "--steps", "2", "--out", str(out), "--models-dir", str(tiny_models_dir))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.glob("*.wav")) == ["1_000.wav", "7_000.wav"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["guide"]["labels"]["7"] == "yes"
    assert manifest["profile"]["name"] == "hf-default" and manifest["profile"]["sampler"]["steps"] == 2
    assert 0 <= manifest["samples"][0]["scores"]["guide_target_probability"] <= 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--hf-guide", "{missing}"], "does not exist"),
        (["--hf-guide", "{partial}"], "no label for digit=7"),
    ],
)
def test_cli_bad_hf_guide_inputs_exit_2_with_one_line(extra, message, hf_dirs, tiny_models_dir, tmp_path):
    values = {"missing": str(tmp_path / "no-model"), "partial": str(hf_dirs["ast-partial"])}
    args = [a.format(**values) for a in extra]
    r = run_cli("generate", *args, "--target", "digit=7", "--steps", "2", "--out", str(tmp_path / "o"), "--models-dir", str(tiny_models_dir))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
