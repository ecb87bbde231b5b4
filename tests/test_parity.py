"""The parity matrix: for every kind of request the same request and seed give the same audio in-process
(`guidance.generate.generate_local`, what `speechguide generate` runs) and over real HTTP against a real
local Serve app.

ONE Serve instance, started once for the whole matrix: the split app (serve/config.yaml, hosting a tiny
Hugging Face classifier too) and the fused single-backbone app (serve/config-fused.yaml, under /fused)
on one local 2-CPU Ray cluster, tiny models, 1 sample and a few steps per request.

Bitwise where the math is the same, and it is the same everywhere here: the deployments run the very
functions the in-process driver runs (the voice guides' reference features and gradients included, computed
on the guide deployment), and on this CPU every case came back sample for sample equal (measured tolerance:
0 PCM steps for every case; a case whose math differed would state its measured tolerance in CASES).
"""

from __future__ import annotations

import base64
import copy
import io
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
import torch
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

REFERENCE = "4_theo_0.wav"  # an FSDD clip as the speaker reference
STEPS = 4
SEED = 3

# name -> (HTTP request body, where it goes, in-process arguments, allowed max |difference| in PCM steps)
CASES = {
    "digit-noisy": ({"targets": [{"guide": "digit", "label": "7"}]}, "", {"kind": "noisy"}, 0),
    "digit-clean-profile": ({"targets": [{"guide": "digit", "label": "2"}], "guide_kind": "clean"}, "", {"kind": "clean"}, 0),
    "hf-guide": ({"targets": [{"guide": "digit", "label": "5"}], "guide_kind": "hf", "hf_guide": "tiny"}, "", {"kind": "hf"}, 0),
    "speaker-stats": ({"targets": [{"guide": "speaker"}], "voice_guide": "stats"}, "", {"kind": "noisy", "voice": "stats"}, 0),
    "speaker-encoder": ({"targets": [{"guide": "speaker"}], "voice_guide": "encoder"}, "", {"kind": "noisy", "voice": "encoder"}, 0),
    "digit+speaker": (
        {"targets": [{"guide": "digit", "label": "7"}, {"guide": "speaker"}], "weights": {"speaker": 2.0}}, "",
        {"kind": "noisy", "voice": "stats", "weights": {"speaker": 2.0}}, 0,
    ),
    "score-subnet": ({"targets": [{"guide": "digit", "label": "7"}]}, "/fused", {"kind": "noisy", "subnet": True}, 0),
}


@pytest.fixture(scope="module")
def matrix_dir(tiny_models_dir, tmp_path_factory) -> Path:
    """The tiny models, the committed word-spectra table (composites retarget), a tiny ScoreSubnet and a
    tiny random Hugging Face classifier saved offline."""
    from test_hf_guide import save_tiny_wav2vec2
    from test_serve_fused import make_subnet

    from guidance.pipeline import ModelPaths

    directory = tmp_path_factory.mktemp("matrix-models")
    for f in tiny_models_dir.glob("*.safetensors"):
        shutil.copy(f, directory / f.name)
    shutil.copy(ModelPaths().path("word_spectra"), directory / "word-spectra.safetensors")
    make_subnet(directory)
    save_tiny_wav2vec2(directory / "hf-tiny")
    return directory


@pytest.fixture(scope="module")
def app_url(matrix_dir, tmp_path_factory):
    """Both apps in one Serve config, deployed once (the running_app starter, on a free port)."""
    from serve.config import DEFAULT_CONFIG_PATH, FUSED_CONFIG_PATH, load_config_file
    from serve.launch import running_app

    split = load_config_file(DEFAULT_CONFIG_PATH)
    fused_app = copy.deepcopy(load_config_file(FUSED_CONFIG_PATH)["applications"][0])
    fused_app.update(name="fused", route_prefix="/fused")
    for dep in fused_app["deployments"]:
        if dep["name"] == "Fused":
            dep["ray_actor_options"] = {"num_cpus": 0.5, "num_gpus": 0}  # both apps fit the 2-CPU test cluster
    split["applications"][0]["args"]["hf_guides"] = {"tiny": {"source": str(matrix_dir / "hf-tiny")}}
    split["applications"].append(fused_app)
    path = tmp_path_factory.mktemp("matrix-config") / "config.yaml"
    path.write_text(yaml.safe_dump(split))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")  # the replicas inherit it: no network for the Hugging Face guide
        with running_app(path, models_dir=matrix_dir) as url:
            yield url


def _pcm(wave: np.ndarray) -> np.ndarray:
    from serve.ingress import wav_bytes

    return soundfile.read(io.BytesIO(wav_bytes(wave, 16000)), dtype="int16")[0]


def _in_process(matrix_dir: Path, fsdd_root: Path, kind: str, voice: str | None = None, weights=None, subnet: bool = False, label="7", digit=True):
    from guidance.generate import generate_local
    from guidance.guides import read_reference
    from guidance.guides.hf import HFAudioGuide
    from guidance.pipeline import ModelPaths, ModelSet
    from guidance.plan import Target, base_profile, with_overrides

    paths = ModelPaths(root=matrix_dir)
    models = ModelSet.from_score_subnet(paths.path("score_subnet"), "cpu") if subnet else ModelSet.load(paths, "cpu")
    if kind == "hf":
        models.guides["hf"] = HFAudioGuide.from_pretrained(str(matrix_dir / "hf-tiny"), models.spec, device=models.device)
    targets = [Target("digit", label)] if digit else []
    references = None
    if voice is not None:
        targets.append(Target("speaker", "ref.wav"))
        references = {"ref.wav": read_reference(fsdd_root / "recordings" / REFERENCE)}
    result = generate_local(
        models, targets, 1, SEED, with_overrides(base_profile(kind), steps=STEPS), kind, references, voice or "stats", weights, paths=paths,
    )
    return _pcm(result.waves.numpy()[0]), result


@pytest.mark.parametrize("name", list(CASES))
def test_same_request_same_audio_in_process_and_over_http(name, app_url, matrix_dir, fsdd_root):
    body, prefix, local, tolerance = CASES[name]
    body = copy.deepcopy(body)
    ref = base64.b64encode((fsdd_root / "recordings" / REFERENCE).read_bytes()).decode("ascii")
    for t in body["targets"]:
        if t["guide"] == "speaker":
            t["reference_wav_base64"] = ref
    body.update(num_samples=1, seed=SEED, steps=STEPS)
    r = httpx.post(f"{app_url}{prefix}/v1/generate", json=body, timeout=300)
    assert r.status_code == 200, r.text
    sample = r.json()["samples"][0]
    served = soundfile.read(io.BytesIO(base64.b64decode(sample["wav_base64"])), dtype="int16")[0]

    digit_label = next((t["label"] for t in body["targets"] if t["guide"] == "digit"), None)
    local_pcm, result = _in_process(
        matrix_dir, fsdd_root, local["kind"], local.get("voice"), local.get("weights"), local.get("subnet", False),
        label=digit_label or "7", digit=digit_label is not None,
    )
    # the comparison means something: audible, and guidance changed the sample
    assert np.abs(local_pcm).max() > 100 and (np.abs(local_pcm) < 32767).mean() > 0.5
    unguided, _ = _in_process(matrix_dir, fsdd_root, "none", subnet=local.get("subnet", False))
    assert np.abs(local_pcm.astype(int) - unguided.astype(int)).max() > 10 * max(tolerance, 1)

    diff = int(np.abs(local_pcm.astype(int) - served.astype(int)).max())
    assert diff <= tolerance, f"{name}: served audio differs from in-process by up to {diff} PCM steps"
    assert [t["guide"] for t in sample["targets"]] == [t["guide"] for t in result.plan.targets_of(0)]
    if name == "digit+speaker":  # the composite retargeted its reference to digit 7 at both doors
        assert result.plan.retargeted and r.json()["models"]["speaker_guide"]["word_spectra"] is True
        assert r.json()["profile"]["guide"]["scale"] == 20.0 == result.plan.profile.guide.scale
    assert set(sample["scores"]) >= set(result.scores[0]) - {"speaker_cosine_wav"}  # the encoder on the waveform is in-process only


def test_cli_url_carries_every_target_and_writes_the_in_process_files(app_url, matrix_dir, fsdd_root, tmp_path):
    """`speechguide generate --url` with a digit + speaker composite, a weight and the encoder voice guide
    writes the same WAV files, byte for byte, as the in-process command."""
    import json
    import subprocess
    import sys

    ref = fsdd_root / "recordings" / REFERENCE
    args = ["generate", "--target", "digit=3", "--target", f"speaker={ref}", "--weight", "speaker=2", "--voice-guide", "encoder",
            "--num", "1", "--steps", "3", "--seed", "2", "--models-dir", str(matrix_dir)]
    outs = {}
    for door, extra in (("local", []), ("http", ["--url", app_url])):
        outs[door] = tmp_path / door
        r = subprocess.run([sys.executable, "-m", "speechguide", *args, *extra, "--out", str(outs[door])], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in outs["local"].glob("*.wav"))
    assert names == sorted(p.name for p in outs["http"].glob("*.wav")) == ["3_000.wav"]
    assert (outs["local"] / names[0]).read_bytes() == (outs["http"] / names[0]).read_bytes()
    remote = json.loads((outs["http"] / "manifest.json").read_text())
    assert remote["request"]["voice_guide"] == "encoder" and remote["request"]["weights"] == {"speaker": 2.0}
    assert "reference_wav_base64" not in json.dumps(remote["request"])  # the manifest names the reference, not its bytes
    assert [t["guide"] for t in remote["samples"][0]["targets"]] == ["digit", "speaker"]
    assert -1 <= remote["samples"][0]["scores"]["speaker_cosine"] <= 1
