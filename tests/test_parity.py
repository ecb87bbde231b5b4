"""The parity matrix: for every kind of request the same request and seed give the same audio in-process
(`guidance.generate.generate_local`, what `speechguide generate` runs) and over real HTTP against a real
local Serve app.

ONE Serve instance, started once for the whole module: the split app (serve/config.yaml, hosting a tiny
Hugging Face classifier too), the fused single-backbone app (serve/config-fused.yaml, under /fused) and the
split models co-located in one ModelHost deployment (serve/config-colocated.yaml, under /colocated) and
hosted by the ingress replica itself, either generator (serve/config-ingress.yaml, under /ingress and
/ingress-fused), on one local 2-CPU Ray cluster, tiny models, 1 sample and a few steps per request. The fused app's own
HTTP tests (merging, models, bad input) run here too, on the same instance.

Bitwise where the math is the same, and it is the same everywhere here: the deployments run the very
functions the in-process driver runs (the voice guides' reference features and gradients included, computed
on the guide deployment), and on this CPU every case came back sample for sample equal (measured tolerance:
0 PCM steps for every case; a case whose math differed would state its measured tolerance in CASES).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import json
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
import torch
import yaml

from guidance.guides import GuidanceProfile
from guidance.pipeline import ModelSet, make_noise, vocode
from guidance.vocoders import AUTO, F0_HEAD_FILE
from serve.fused import FusedCall, fused_answerer
from serve.steps import GuidePlan, drive_sampler

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]  # every test here talks to the app

FUSED_APP = "fused"
# sigma_max 1: the tiny random models' samples stay small enough for Griffin-Lim to give finite audio
# (from sigma 80 they blow up and the WAVs come out silent, which would make any comparison vacuous).
FUSED_PROFILE = {"name": "fused-test", "sampler": {"sigma_max": 1.0}, "guide": {"scale": 20.0}}  # strong: tiny models, small sigmas
FUSED_VALID = {"targets": [{"guide": "digit", "label": "7"}], "num_samples": 1, "seed": 3, "steps": 3, "profile": FUSED_PROFILE}
REFERENCE = "4_theo_0.wav"  # an FSDD clip as the speaker reference
STEPS = 4
SEED = 3

# name -> (HTTP request body, where it goes, in-process arguments, allowed max |difference| in PCM steps)
CASES = {
    "digit-noisy": ({"targets": [{"guide": "digit", "label": "7"}], "guide_kind": "noisy"}, "", {"kind": "noisy"}, 0),
    "digit-default-kind": ({"targets": [{"guide": "digit", "label": "3"}]}, "", {"kind": "clean"}, 0),  # no guide_kind: clean
    "digit-clean-profile": ({"targets": [{"guide": "digit", "label": "2"}], "guide_kind": "clean"}, "", {"kind": "clean"}, 0),
    "hf-guide": ({"targets": [{"guide": "digit", "label": "5"}], "guide_kind": "hf", "hf_guide": "tiny"}, "", {"kind": "hf"}, 0),
    "speaker-stats": ({"targets": [{"guide": "speaker"}], "voice_guide": "stats"}, "", {"kind": "noisy", "voice": "stats"}, 0),
    "speaker-encoder": ({"targets": [{"guide": "speaker"}], "voice_guide": "encoder"}, "", {"kind": "noisy", "voice": "encoder"}, 0),
    "digit+speaker": (
        {"targets": [{"guide": "digit", "label": "7"}, {"guide": "speaker"}], "weights": {"speaker": 2.0}}, "",
        {"kind": "noisy", "voice": "stats", "weights": {"speaker": 2.0}}, 0,
    ),
    "score-subnet": ({"targets": [{"guide": "digit", "label": "7"}]}, "/fused", {"kind": "noisy", "subnet": True}, 0),
    "digit+pitch": (  # the CREPE guide hosted by the Classifier deployment; a rising contour (its line: the plan's)
        {"targets": [{"guide": "digit", "label": "4"}, {"guide": "pitch", "label": "rise"}]}, "", {"kind": "clean", "pitch": "rise"}, 0,
    ),
}
# The split models co-located (args.colocate): a round's denoiser and guide calls travel as one call, to one
# ModelHost deployment (/colocated) or to the ingress replica's own host (/ingress, no model deployments).
# Between them: x_t guides (noisy), x0_hat guides (clean: two rounds per evaluation), a request table (speaker),
# CREPE and the harmonic writer (pitch), a Hugging Face guide, and the fused generator hosted by its ingress.
for _prefix, _names in (
    ("/colocated", ("digit-noisy", "digit+pitch")),
    ("/ingress", ("digit-clean-profile", "hf-guide", "digit+speaker")),
    ("/ingress-fused", ("score-subnet",)),
):
    for _name in _names:
        _body, _, _local, _tol = CASES[_name]
        CASES[f"{_prefix[1:]}:{_name}"] = (_body, _prefix, _local, _tol)
IN_PROCESS_SCORES = {"speaker_cosine_wav", "pitch_heard_hz", "pitch_heard_error_st", "pitch_heard_glide_st", "pitch_voiced_fraction"}


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
    shutil.copy(ModelPaths().root / F0_HEAD_FILE, directory / F0_HEAD_FILE)  # pitch requests are written by the harmonic vocoder
    make_subnet(directory)
    save_tiny_wav2vec2(directory / "hf-tiny")
    return directory


@pytest.fixture(scope="module")
def app_url(matrix_dir, tmp_path_factory):
    """Both apps in one Serve config, deployed once (the running_app starter, on a free port)."""
    from serve.config import COLOCATED_CONFIG_PATH, DEFAULT_CONFIG_PATH, FUSED_CONFIG_PATH, INGRESS_HOSTED_CONFIG_PATH, load_config_file
    from serve.launch import running_app

    split = load_config_file(DEFAULT_CONFIG_PATH)
    fused_app = copy.deepcopy(load_config_file(FUSED_CONFIG_PATH)["applications"][0])
    fused_app.update(name="fused", route_prefix="/fused")
    for dep in fused_app["deployments"]:
        if dep["name"] == "Fused":
            # both apps fit the 2-CPU test cluster; one replica (the file has two, one per cohort), whose forward
            # counters the merge tests below read
            dep.update(num_replicas=1, ray_actor_options={"num_cpus": 0.5, "num_gpus": 0})
    fused_app["args"]["step_merging"]["cohorts"] = 1
    # The split models in one ModelHost deployment (serve/config-colocated.yaml) under /colocated: one replica
    # of one thread, no CPUs reserved (the two apps above take the test cluster's two)
    colocated = copy.deepcopy(load_config_file(COLOCATED_CONFIG_PATH)["applications"][0])
    colocated.update(name="colocated", route_prefix="/colocated")
    colocated["args"]["step_merging"]["cohorts"] = 1
    colocated["args"]["hf_guides"] = {"tiny": {"source": str(matrix_dir / "hf-tiny")}}
    for dep in colocated["deployments"]:
        dep["ray_actor_options"] = {"num_cpus": 0, "num_gpus": 0}
        if dep["name"] == "ModelHost":
            dep.update(num_replicas=1, user_config={**dep["user_config"], "torch_threads": 1})
    # The same models hosted by the ingress replica itself (serve/config-ingress.yaml), either generator
    in_ingress = []
    for name, generator in (("ingress", "unet"), ("ingress-fused", "score-subnet")):
        app = copy.deepcopy(load_config_file(INGRESS_HOSTED_CONFIG_PATH)["applications"][0])
        app.update(name=name, route_prefix=f"/{name}")
        app["args"].update(generator=generator, tuning={"torch_threads": 1})
        if generator == "unet":
            app["args"]["hf_guides"] = {"tiny": {"source": str(matrix_dir / "hf-tiny")}}
        app["deployments"][0].update(num_replicas=1, ray_actor_options={"num_cpus": 0, "num_gpus": 0})
        in_ingress.append(app)
    split["applications"][0]["args"]["hf_guides"] = {"tiny": {"source": str(matrix_dir / "hf-tiny")}}
    split["applications"] += [fused_app, colocated, *in_ingress]
    path = tmp_path_factory.mktemp("matrix-config") / "config.yaml"
    path.write_text(yaml.safe_dump(split))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")  # the replicas inherit it: no network for the Hugging Face guide
        with running_app(path, models_dir=matrix_dir) as url:
            yield url


@pytest.fixture(scope="module")
def fused_url(app_url) -> str:
    return f"{app_url}/fused"


@pytest.fixture(scope="module")
def client(fused_url):
    with httpx.Client(base_url=fused_url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def subnet_models(matrix_dir):
    from guidance.pipeline import ModelPaths

    return ModelSet.from_score_subnet(ModelPaths(root=matrix_dir).path("score_subnet"), "cpu")


def _subnet_in_process(models, label: int, seed: int, steps: int, scale: float | None = None, n: int = 1) -> torch.Tensor:
    from guidance.pipeline import sample_mels

    profile = GuidanceProfile.model_validate(FUSED_PROFILE).with_sampler(steps=steps)
    if scale is not None:
        profile = profile.with_guide(scale=scale)
    return sample_mels(models, "noisy", torch.tensor([label] * n), profile, make_noise(n, models.spec, seed), seed=seed)


def _pcm(wave: np.ndarray) -> np.ndarray:
    from serve.ingress import wav_bytes

    return soundfile.read(io.BytesIO(wav_bytes(wave, 16000)), dtype="int16")[0]


def _in_process(
    matrix_dir: Path, fsdd_root: Path, kind: str, voice: str | None = None, weights=None, subnet: bool = False, label="7", digit=True,
    pitch: str | None = None,
):
    from guidance.generate import generate_local
    from guidance.guides import read_reference
    from guidance.guides.hf import HFAudioGuide
    from guidance.pipeline import ModelPaths, ModelSet
    from guidance.plan import Target, base_profile, with_overrides

    paths = ModelPaths(root=matrix_dir)
    models = ModelSet.from_score_subnet(paths.path("score_subnet"), "cpu", vocoder=AUTO) if subnet else ModelSet.load(paths, "cpu", vocoder=AUTO)
    if kind == "hf":
        models.guides["hf"] = HFAudioGuide.from_pretrained(str(matrix_dir / "hf-tiny"), models.spec, device=models.device)
    targets = [Target("digit", label)] if digit else []
    references = None
    if voice is not None:
        targets.append(Target("speaker", "ref.wav"))
        references = {"ref.wav": read_reference(fsdd_root / "recordings" / REFERENCE)}
    if pitch is not None:
        targets.append(Target("pitch", pitch))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the 1-thread replicas: other thread counts round sums differently (1 PCM step)
    try:
        result = generate_local(
            models, targets, 1, SEED, with_overrides(base_profile(kind), steps=STEPS), kind, references, voice or "stats", weights, paths=paths,
        )
    finally:
        torch.set_num_threads(threads)
    return _pcm(result.waves.numpy()[0]), result


UNGUIDED: dict[bool, np.ndarray] = {}


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
        label=digit_label or "7", digit=digit_label is not None, pitch=local.get("pitch"),
    )
    # the comparison means something: audible, and guidance changed the sample
    assert np.abs(local_pcm).max() > 100 and (np.abs(local_pcm) < 32767).mean() > 0.5
    subnet = local.get("subnet", False)
    if subnet not in UNGUIDED:  # one unguided sample per generator serves every case
        UNGUIDED[subnet] = _in_process(matrix_dir, fsdd_root, "none", subnet=subnet)[0]
    unguided = UNGUIDED[subnet]
    assert np.abs(local_pcm.astype(int) - unguided.astype(int)).max() > 10 * max(tolerance, 1)

    diff = int(np.abs(local_pcm.astype(int) - served.astype(int)).max())
    assert diff <= tolerance, f"{name}: served audio differs from in-process by up to {diff} PCM steps"
    assert [t["guide"] for t in sample["targets"]] == [t["guide"] for t in result.plan.targets_of(0)]
    if name == "digit+speaker":  # the composite retargeted its reference to digit 7 at both doors
        assert result.plan.retargeted and r.json()["models"]["speaker_guide"]["word_spectra"] is True
        assert r.json()["profile"]["guide"]["scale"] == 20.0 == result.plan.profile.guide.scale
    if name == "digit+pitch":  # the same resolved line at both doors, and the hosted guide's own reading of the sample
        assert sample["scores"]["pitch_target_hz"] == result.scores[0]["pitch_target_hz"]
        assert sample["scores"]["pitch_crepe_error_st"] == result.scores[0]["pitch_crepe_error_st"]
        assert r.json()["models"]["pitch_guide"]["name"] == result.pitch_guide.describe()["name"]
        assert r.json()["models"]["vocoder"]["kind"] == "harmonic"  # auto at both doors: a pitch request's writer
    # the encoder and pYIN on the written waveform are in-process only
    assert set(sample["scores"]) >= set(result.scores[0]) - IN_PROCESS_SCORES


def test_cli_url_carries_every_target_and_writes_the_in_process_files(app_url, matrix_dir, fsdd_root, tmp_path):
    """`speechguide generate --url` with a digit + speaker + pitch composite (a contour centred on the reference's
    median F0, which the hosted pitch guide reads), a weight and the encoder voice guide writes the same WAV
    files as the in-process command: the same names and lengths, samples equal up to the silence gate (below)."""
    import json
    import subprocess
    import sys

    ref = fsdd_root / "recordings" / REFERENCE
    args = ["generate", "--target", "digit=3", "--target", f"speaker={ref}", "--target", "pitch=fall", "--weight", "speaker=2", "--voice-guide", "encoder",
            "--num", "1", "--steps", "3", "--seed", "2", "--models-dir", str(matrix_dir)]
    # The in-process CLI runs with one thread, as the replicas do (Ray gives a replica with num_cpus < 1 one
    # thread). Another count splits the reductions differently: a 16-core CI machine's default moved samples
    # by up to 4 PCM steps, 2 threads here by up to 118 after the composite's 3 steps: the same math, another
    # summation order.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outs = {}
    for door, extra in (("local", []), ("http", ["--url", app_url])):
        outs[door] = tmp_path / door
        r = subprocess.run([sys.executable, "-m", "speechguide", *args, *extra, "--out", str(outs[door])], capture_output=True, text=True,
                           timeout=300, env=env)
        assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in outs["local"].glob("*.wav"))
    assert names == sorted(p.name for p in outs["http"].glob("*.wav")) == ["3_000.wav"]
    local, rate_l = soundfile.read(str(outs["local"] / names[0]), dtype="int16")
    served, rate_h = soundfile.read(str(outs["http"] / names[0]), dtype="int16")
    # Same file up to the silence gate (guidance/output_level.py): float differences between the doors far below
    # one PCM step can move a sample across the gate's 2-step threshold, so a few samples may differ by <= 2 steps.
    assert rate_l == rate_h and local.shape == served.shape
    assert np.abs(local.astype(int) - served.astype(int)).max() <= 2 and (local != served).mean() < 0.01
    remote = json.loads((outs["http"] / "manifest.json").read_text())
    assert remote["request"]["voice_guide"] == "encoder" and remote["request"]["weights"] == {"speaker": 2.0}
    assert "reference_wav_base64" not in json.dumps(remote["request"])  # the manifest names the reference, not its bytes
    assert [t["guide"] for t in remote["samples"][0]["targets"]] == ["digit", "speaker", "pitch"]
    here = json.loads((outs["local"] / "manifest.json").read_text())
    line = remote["samples"][0]["scores"]["pitch_target_hz"]
    assert line == here["samples"][0]["scores"]["pitch_target_hz"] and line[0] > line[1]  # the same falling line, from the same reference F0
    assert -1 <= remote["samples"][0]["scores"]["speaker_cosine"] <= 1


@pytest.mark.parametrize(
    "pitch, speaker, prefix, status, says",
    [
        ("600", False, "", 422, "50-500 Hz"),
        ("wobble", False, "", 422, "pitch target must be"),
        ("+3st", False, "", 422, "speaker=REF.wav"),
        ("-24st", True, "", 422, "50-500"),  # resolved against the reference's median F0, which the hosted guide reads
        ("140", False, "/fused", 404, "hosts no 'pitch' guide"),
    ],
    ids=["out of range", "malformed", "relative without a reference", "relative out of range", "fused app"],
)
def test_bad_pitch_targets_get_a_4xx_with_a_message(app_url, fsdd_root, pitch, speaker, prefix, status, says):
    targets = [{"guide": "digit", "label": "3"}, {"guide": "pitch", "label": pitch}]
    if speaker:
        targets.append({"guide": "speaker", "reference_wav_base64": base64.b64encode((fsdd_root / "recordings" / REFERENCE).read_bytes()).decode("ascii")})
    r = httpx.post(f"{app_url}{prefix}/v1/generate", json={"targets": targets, "num_samples": 1, "steps": 2}, timeout=120)
    assert r.status_code == status, r.text
    assert says in r.json()["detail"], r.json()


# ---- the fused app (serve/config-fused.yaml) on the same Serve instance, under /fused ----------------


def _wav_samples(data: bytes) -> np.ndarray:
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    wave, rate = soundfile.read(io.BytesIO(data), dtype="int16")
    assert rate == 16000 and len(wave) > 0.9 * 16000
    return wave.astype(int)


def _local_wav(models: ModelSet, label: int, seed: int, steps: int, scale: float | None = None) -> np.ndarray:
    """The in-process single-backbone provider's sample, vocoded and encoded as the app does."""
    from serve.ingress import wav_bytes

    mels = _subnet_in_process(models, label, seed, steps, scale)
    return _wav_samples(wav_bytes(vocode(mels, models.vocoder).numpy()[0], 16000))


@pytest.mark.slow
def test_fused_app_serves_the_in_process_guided_sample(client, subnet_models):
    r = client.post("/v1/generate", json=FUSED_VALID, headers={"Accept": "audio/wav"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav"
    served = _wav_samples(r.content)
    err = np.abs(served - _local_wav(subnet_models, 7, 3, 3))
    # Same log-Mels up to float rounding (compared exactly below); Griffin-Lim amplifies rounding to a
    # few LSB at single points (seen: 2 to 6 of 32767).
    assert err.max() <= 64 and err.mean() <= 2, (err.max(), err.mean())
    assert np.abs(served).max() > 1000  # real audio, not a silent file
    assert np.abs(served - _local_wav(subnet_models, 7, 3, 3, scale=0.0)).max() > 20  # guidance reached the audio
    scores = json.loads(r.headers["x-speechguide-scores"])
    assert 0 <= scores["guide_target_probability"] <= 1 and "guide_last_step_probability" in scores


@pytest.mark.slow
def test_concurrent_requests_merge_into_shared_passes_and_keep_their_results(fused_url, subnet_models):
    """Four requests at once (different seeds, digits and step counts, so different sigmas meet in a
    batch; one unguided): each answer is its own in-process sample, and forwards served several calls."""
    from ray import serve

    handle = serve.get_deployment_handle("Fused", app_name=FUSED_APP)
    handle.reset_stats.remote().result(timeout_s=30)
    payloads = [{**FUSED_VALID, "seed": 10 + i, "steps": 4 + i, "targets": [{"guide": "digit", "label": str(i)}]} for i in range(4)]
    payloads[3]["guidance_scale"] = 0.0

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=fused_url, timeout=120) as c:
            return await asyncio.gather(*(c.post("/v1/generate", json=p) for p in payloads))

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    for i, (p, r) in enumerate(zip(payloads, responses)):
        body = r.json()
        served = _wav_samples(base64.b64decode(body["samples"][0]["wav_base64"]))
        local = _local_wav(subnet_models, i, p["seed"], p["steps"], p.get("guidance_scale"))
        # Merged with other rows, a forward rounds differently than alone; the sampler and Griffin-Lim
        # amplify that a little (seen: up to 34 LSB at single sample points, mean 0.3 to 0.52), far below what
        # guidance changes; the log-Mels themselves are compared exactly in the next test.
        err = np.abs(served - local)
        assert err.max() <= 64 and err.mean() <= 2 and np.abs(served).max() > 1000, (i, err.max(), err.mean())
        if i < 3:
            unguided = np.abs(served - _local_wav(subnet_models, i, p["seed"], p["steps"], 0.0)).mean()
            assert unguided > 10 * err.mean() + 0.5, (i, unguided, err.mean())
        calls = 2 * p["steps"] - 1
        assert body["stats"]["denoiser_calls"] == calls
        assert body["stats"]["guide_calls"] == (0 if i == 3 else calls)
        assert body["models"]["generator"] == "score-subnet"
    stats = handle.stats.remote().result(timeout_s=30)
    assert stats["items"] == sum(2 * p["steps"] - 1 for p in payloads) and stats["batches"] < stats["items"], stats


@pytest.mark.slow
def test_deployment_steps_of_concurrent_samplers_equal_subnet_in_process(fused_url, subnet_models):
    """Four samplers driven concurrently through the running Fused deployment's handle (their steps
    merged into shared passes) end at the log-Mels the in-process single-backbone provider samples for each, allclose."""
    from ray import serve

    handle = serve.get_deployment_handle("Fused", app_name=FUSED_APP)
    handle.reset_stats.remote().result(timeout_s=30)
    base = GuidanceProfile.model_validate(FUSED_PROFILE)
    jobs = [(d, 20 + d, 3 + d, 20.0 if d != 2 else 0.0) for d in range(4)]  # label, seed, steps, scale

    async def step(call: FusedCall):
        return await handle.step.remote(call)

    async def one(label: int, seed: int, steps: int, scale: float) -> torch.Tensor:
        prof = base.with_sampler(steps=steps).with_guide(scale=scale)
        plan = GuidePlan("noisy", torch.tensor([label]), prof.settings_for("digit"), True) if scale > 0 else None
        mels, _ = await drive_sampler(make_noise(1, subnet_models.spec, seed), prof.sampler.to_config(), seed, plan,
                                      None, None, fused_answerer(step))
        return mels

    async def run_all() -> list[torch.Tensor]:
        return await asyncio.gather(*(one(*job) for job in jobs))

    served = asyncio.run(run_all())
    for (label, seed, steps, scale), got in zip(jobs, served):
        torch.testing.assert_close(got, _subnet_in_process(subnet_models, label, seed, steps, scale), rtol=1e-4, atol=1e-4)
    stats = handle.stats.remote().result(timeout_s=30)
    assert stats["max_items_per_batch"] >= 2 and stats["batches"] < stats["items"], stats


@pytest.mark.slow
def test_fused_models_and_health(client):
    body = client.get("/v1/models").json()
    assert body["generator"] == "score-subnet"
    (den,) = body["denoisers"]
    assert den["kind"] == "score-subnet" and den["fused"] is True and den["backbone"]["file"] == "classifier-noisy.safetensors"
    assert [g["guide_kind"] for g in body["guides"]] == ["noisy"] and body["guides"][0]["noise_conditioned"]
    assert body["guides"][0]["version"] == den["backbone"]["version"]
    h = client.get("/healthz")
    assert h.status_code == 200 and h.json()["deployments"] == {"Fused": "ok"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "body, status, field",
    [
        ({**FUSED_VALID, "guide_kind": "clean"}, 422, "guide_kind"),
        ({**FUSED_VALID, "guide_model": "classifier-clean@production"}, 422, "guide_model"),
        ({**FUSED_VALID, "targets": [{"guide": "digit", "label": "12"}]}, 404, "targets.0.label"),
        ({**FUSED_VALID, "steps": 0}, 422, "steps"),
        ({**FUSED_VALID, "guidance_scale": -1.0}, 422, "guidance_scale"),
    ],
    ids=["clean guide", "registry guide", "unknown label", "steps 0", "negative scale"],
)
def test_fused_bad_input_gets_a_4xx(client, body, status, field):
    r = client.post("/v1/generate", json=body)
    assert r.status_code == status, r.text
    assert field in r.json()["detail"]


@pytest.mark.slow
def test_fused_still_serves_after_bad_input(client):
    r = client.post("/v1/generate", json={**FUSED_VALID, "seed": 9}, headers={"Accept": "audio/wav"})
    assert r.status_code == 200 and r.content[:4] == b"RIFF"


@pytest.mark.slow
@pytest.mark.parametrize("prefix", ["/colocated", "/ingress"])
def test_colocated_app_refuses_registered_guides_and_reports_its_one_model_host(app_url, prefix):
    """The model host holds the models directory's guides only: a registered guide is refused with 422 before any
    sampling, and the health check names the one model host (a deployment, or the ingress replica's own)."""
    r = httpx.post(f"{app_url}{prefix}/v1/generate", json={**FUSED_VALID, "profile": None, "guide_model": "classifier-clean@production"}, timeout=60)
    assert r.status_code == 422 and "guide_model" in r.json()["detail"] and "colocate" in r.json()["detail"], r.text
    h = httpx.get(f"{app_url}{prefix}/healthz", timeout=60)
    assert h.status_code == 200 and h.json()["deployments"] == {"ModelHost": "ok"}


# ---- chaos: the Fused replica killed under a steady load (serve/chaos.py, bench/chaos.py), last --------


@pytest.mark.slow
def test_fused_replica_killed_under_load_loses_no_request(fused_url):
    """The fused app's one model deployment killed mid-load: the ingress resends the step calls to its
    replacement, so no request is lost and full service comes back."""
    from serve.chaos import kill_replica, run_case, wait_healthy

    wait_healthy(FUSED_APP)
    payload = {k: v for k, v in FUSED_VALID.items() if k != "seed"}  # each client request gets its own seed
    result = run_case("kill Fused replica", fused_url, kill_replica("Fused", FUSED_APP), clients=2, warmup_s=2, sustain_s=3, payload=payload)
    print(result.fault_note, result.row())
    assert result.ok > 0
    assert result.lost == 0, result.examples("lost")
    assert result.recovery_s() is not None, (result.examples("failed"), result.examples("lost"))
    wait_healthy(FUSED_APP)  # the killed replica was replaced
