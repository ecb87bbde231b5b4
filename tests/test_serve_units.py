"""The Serve app's parts that need no cluster: config file checks, request schema, step math, CLI args.

The split sampler (`serve.steps`) is checked against the in-process pipeline here, with local
functions standing in for the deployments; tests/test_serve.py runs the real app over HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import io

import numpy as np
import pytest
import soundfile
import torch
import typer
from typer.testing import CliRunner

from guidance.guides import DEFAULT_PROFILES, GuideTerm, guide_gradient
from guidance.pipeline import ModelPaths, ModelSet, make_noise, sample_mels
from serve.config import DEFAULT_CONFIG_PATH, check_config, load_config_file, unknown_keys, with_overrides
from serve.schemas import GenerateRequest
from serve.steps import GuideCall, GuidePlan, denoise_batch, drive_sampler, from_wire, guide_batch, to_wire

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def models(tiny_models_dir) -> ModelSet:
    return ModelSet.load(ModelPaths(root=tiny_models_dir), "cpu")


# ---- the config file ---------------------------------------------------------------------------


def test_shipped_config_passes_rays_schema_and_has_no_unknown_keys():
    from ray.serve.schema import ServeDeploySchema

    data = load_config_file(DEFAULT_CONFIG_PATH)
    schema = ServeDeploySchema.model_validate(data)  # Ray's own check, as `serve deploy` does it
    assert unknown_keys(data, ServeDeploySchema) == []
    assert check_config(data) == schema
    app = schema.applications[0]
    assert app.import_path == "serve.app:build_app"
    deps = {d.name: d for d in app.deployments}
    assert set(deps) == {"SpeechIngress", "Denoiser", "Classifier"}
    assert data["http_options"]["host"] == "127.0.0.1"
    for name in ("Denoiser", "Classifier"):
        d = deps[name]
        assert d.ray_actor_options.num_gpus == 0
        assert d.max_ongoing_requests > d.user_config["max_batch_size"]  # or batches could never fill
        assert d.max_queued_requests > 0
    assert deps["SpeechIngress"].max_queued_requests > 0 and deps["SpeechIngress"].backpressure_config.retry_after_s
    assert deps["Denoiser"].autoscaling_config["max_replicas"] >= deps["Denoiser"].autoscaling_config["min_replicas"]


@pytest.mark.parametrize(
    "path",
    [
        ("http_options", "hots"),
        ("applications", 0, "improt_path"),
        ("applications", 0, "deployments", 0, "max_queued_request"),
        ("applications", 0, "deployments", 0, "ray_actor_options", "num_gpu"),
        ("applications", 0, "deployments", 1, "autoscaling_config", "max_replica"),
        ("applications", 0, "deployments", 1, "user_config", "max_batch"),
        ("applications", 0, "args", "model_dir"),
    ],
)
def test_config_typos_are_refused(path):
    data = load_config_file(DEFAULT_CONFIG_PATH)
    bad = copy.deepcopy(data)
    node = bad
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = 1
    with pytest.raises(ValueError, match=path[-1]):
        check_config(bad)


def test_config_values_are_checked_too():
    data = load_config_file(DEFAULT_CONFIG_PATH)
    bad = copy.deepcopy(data)
    bad["applications"][0]["deployments"][1]["user_config"]["max_batch_size"] = 0
    with pytest.raises(ValueError, match="max_batch_size"):
        check_config(bad)
    bad = copy.deepcopy(data)
    bad["applications"][0]["deployments"][0]["max_ongoing_requests"] = -3
    with pytest.raises(ValueError):
        check_config(bad)


def test_config_file_documents_the_admission_defaults_of_config_py():
    """serve/config.yaml lists the admission knobs as comments; the values there are config.py's defaults."""
    import re

    import yaml

    from serve.config import Admission

    after = DEFAULT_CONFIG_PATH.read_text().split("admission: {}\n", 1)[1].splitlines()
    block = "\n".join(after[: next(i for i, line in enumerate(after) if not re.match(r"\s*#   ", line))])  # its commented keys
    documented = dict(re.findall(r"^\s*#\s+(\w+): (\S+)\s+#", block, flags=re.M))
    defaults = Admission().model_dump()
    assert set(documented) == set(defaults)
    assert {k: yaml.safe_load(v) for k, v in documented.items()} == defaults
    app = load_config_file(DEFAULT_CONFIG_PATH)["applications"][0]
    assert app["args"]["admission"] == {}  # the defaults apply from one place
    bad = copy.deepcopy(load_config_file(DEFAULT_CONFIG_PATH))
    bad["applications"][0]["args"]["admission"] = {"safety_margin": 1.5}
    with pytest.raises(ValueError, match="safety_margin"):
        check_config(bad)


def test_overrides_reach_every_part(tmp_path):
    data = with_overrides(
        load_config_file(DEFAULT_CONFIG_PATH), models_dir=tmp_path, port=8123, user_config={"max_batch_size": 1},
        deployments={"SpeechIngress": {"max_queued_requests": 3}},
    )
    app = data["applications"][0]
    assert app["args"]["models_dir"] == str(tmp_path.resolve()) and data["http_options"]["port"] == 8123
    deps = {d["name"]: d for d in app["deployments"]}
    assert deps["Denoiser"]["user_config"]["max_batch_size"] == 1 == deps["Classifier"]["user_config"]["max_batch_size"]
    assert deps["SpeechIngress"]["max_queued_requests"] == 3
    check_config(data)


def test_app_builds_from_defaults_and_from_args(tiny_models_dir):
    from serve.app import app, build_app

    assert app is not None
    assert build_app({"models_dir": str(tiny_models_dir), "tuning": {"max_batch_size": 4}}) is not None
    with pytest.raises(ValueError, match="model_dir"):
        build_app({"model_dir": "x"})


# ---- the request schema ------------------------------------------------------------------------


def _wav_b64() -> str:
    buf = io.BytesIO()
    soundfile.write(buf, np.zeros(1600, dtype=np.float32), 16000, subtype="PCM_16", format="WAV")
    return base64.b64encode(buf.getvalue()).decode()


def test_request_schema_accepts_the_documented_example_and_a_valid_speaker_clip():
    req = GenerateRequest.model_validate(
        {"targets": [{"guide": "digit", "label": "7"}], "num_samples": 1, "seed": 0, "guidance_scale": 3.0, "steps": 30, "profile": "production"}
    )
    assert req.total_samples == 1 and req.guide_kind is None  # the ingress picks the default kind (default_digit_kind)
    GenerateRequest.model_validate({"targets": [{"guide": "speaker", "reference_wav_base64": _wav_b64()}]})


# ---- the split sampler vs the in-process one ---------------------------------------------------


@pytest.mark.parametrize("kind", ["noisy", "clean"])
def test_split_sampler_matches_in_process_pipeline(models, kind):
    profile = DEFAULT_PROFILES[kind].with_sampler(steps=5)
    if kind == "clean":
        profile = profile.with_guide(scale=0.5, sigma_hi=20.0)
    labels = torch.tensor([7, 7, 2])
    noise = make_noise(3, models.spec, 11)
    expected = sample_mels(models, kind, labels, profile, noise, seed=11)
    settings = profile.settings_for("digit")
    plan = GuidePlan(kind, labels, settings, models.guides[kind].needs_sigma or settings.input == "x_t")
    seen: list[GuideCall] = []

    async def denoise(x, sigma):
        return from_wire(denoise_batch(models.denoiser.model, [(to_wire(x), to_wire(sigma))], models.device)[0])

    async def guide(call):
        seen.append(call)
        return guide_batch(models.guides, [call], models.device)[0]

    out, stats = asyncio.run(drive_sampler(noise, profile.sampler.to_config(), 11, plan, denoise, guide))
    assert torch.equal(out, expected)
    assert stats.steps == 5 and stats.denoiser_calls == 9  # Heun: two calls per step but the last
    if kind == "noisy":
        assert stats.guide_calls == 9
    else:  # the clean guide is switched off above sigma_hi: no calls there at all
        assert 0 < stats.guide_calls < 9 and all(float(c.sigma.max()) <= 20.0 for c in seen)


@pytest.mark.parametrize("kind", ["noisy", "clean"])
def test_host_rounds_match_the_split_calls_and_merge_across_requests(models, kind):
    """`args.colocate`: each round of a request's calls travels as ONE call to the model host; merged with
    other requests' rounds it is answered as the split deployments answer (same math, same functions), and the
    samples equal the in-process sampler's up to float rounding (bitwise alone: tests/test_parity.py). A clean guide (x0_hat) needs two rounds per evaluation."""
    from serve.steps import HostRound, host_answerer, host_round_batch

    profile = DEFAULT_PROFILES[kind].with_sampler(steps=4)
    settings = profile.settings_for("digit")
    rounds: list[list[HostRound]] = []
    pending: list[tuple[HostRound, asyncio.Future]] = []

    async def flush():  # the other request's round of the same step arrives: answer both in one batch
        await asyncio.sleep(0)
        if pending:
            take = pending[:]
            pending.clear()
            rounds.append([r for r, _ in take])
            for (_, f), a in zip(take, host_round_batch(models.denoiser.model, models.guides, [r for r, _ in take], models.device)):
                f.set_result(a)

    async def host(r: HostRound):
        f = asyncio.get_running_loop().create_future()
        pending.append((r, f))
        asyncio.get_running_loop().create_task(flush())
        return await f

    async def both():
        runs = []
        for label, seed in ((7, 11), (2, 12)):
            labels = torch.tensor([label, label])
            plan = GuidePlan(kind, labels, settings, models.guides[kind].needs_sigma or settings.input == "x_t")
            runs.append(drive_sampler(make_noise(2, models.spec, seed), profile.sampler.to_config(), seed, plan, None, None, host_answerer(host)))
        return await asyncio.gather(*runs)

    results = asyncio.run(both())
    for (out, stats), (label, seed) in zip(results, ((7, 11), (2, 12))):
        expected = sample_mels(models, kind, torch.tensor([label, label]), profile, make_noise(2, models.spec, seed), seed=seed)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)  # batch 4 against 2: another summation order
        assert stats.denoiser_calls == 7
    assert max(len(r) for r in rounds) == 2  # the two requests' rounds shared batches
    with_guides = [r for batch in rounds for r in batch if r.guides]
    if kind == "noisy":  # one round per evaluation: the denoiser and the x_t guide in one call
        assert all(r.denoise is not None for r in with_guides)
    else:  # x0_hat guide: its gradient call follows the denoiser's round in a round of its own
        assert with_guides and all(r.denoise is None for r in with_guides)


def _only_the_layout_differs(data: dict) -> tuple[dict, dict]:
    """Assert that a layout's config file is config.yaml's but for its layout: the proxy, and the app's args
    other than `colocate` and `step_merging.cohorts`. Returns (its app, config.yaml's app)."""
    split = load_config_file(DEFAULT_CONFIG_PATH)
    assert {k: v for k, v in data.items() if k != "applications"} == {k: v for k, v in split.items() if k != "applications"}
    ours, theirs = data["applications"][0], split["applications"][0]
    assert {k: v for k, v in ours["args"].items() if k not in ("colocate", "step_merging")} == {
        k: v for k, v in theirs["args"].items() if k != "step_merging"}
    assert {k: v for k, v in ours["args"]["step_merging"].items() if k != "cohorts"} == {
        k: v for k, v in theirs["args"]["step_merging"].items() if k != "cohorts"}
    return ours, theirs


def test_colocated_config_is_checked_and_refuses_the_split_deployments():
    from serve.config import COLOCATED_CONFIG_PATH

    data = load_config_file(COLOCATED_CONFIG_PATH)
    app = check_config(data).applications[0]
    assert {d.name for d in app.deployments} == {"SpeechIngress", "ModelHost"} and data["applications"][0]["args"]["colocate"] is True
    host = next(d for d in app.deployments if d.name == "ModelHost")
    assert host.num_replicas == data["applications"][0]["args"]["step_merging"]["cohorts"]  # one cohort per replica
    ours, theirs = _only_the_layout_differs(data)
    assert ours["deployments"][0] == theirs["deployments"][0] and ours["deployments"][0]["name"] == "SpeechIngress"
    mixed = load_config_file(DEFAULT_CONFIG_PATH)
    mixed["applications"][0]["args"]["colocate"] = True
    with pytest.raises(ValueError, match="has no Denoiser deployment"):
        check_config(mixed)
    back = copy.deepcopy(data)
    back["applications"][0]["args"]["colocate"] = False
    with pytest.raises(ValueError, match="has no ModelHost deployment"):
        check_config(back)
    subnet = copy.deepcopy(data)
    subnet["applications"][0]["args"]["generator"] = "score-subnet"
    with pytest.raises(ValueError, match="colocate"):
        check_config(subnet)


def test_ingress_hosted_config_is_checked_and_has_no_model_deployment():
    """serve/config-ingress.yaml: the ingress replicas host the models (args.colocate: ingress); a model
    deployment beside it is refused, and everything but the layout is config.yaml's."""
    from serve.config import INGRESS_HOSTED_CONFIG_PATH, AppArgs, model_deployments

    data = load_config_file(INGRESS_HOSTED_CONFIG_PATH)
    app = check_config(data).applications[0]
    ours, _ = _only_the_layout_differs(data)
    assert [d.name for d in app.deployments] == ["SpeechIngress"] and ours["args"]["colocate"] == "ingress"
    assert model_deployments(AppArgs.model_validate(ours["args"])) == ()
    with_host = copy.deepcopy(data)
    with_host["applications"][0]["deployments"].append({"name": "ModelHost", "num_replicas": 1})
    with pytest.raises(ValueError, match="has no ModelHost deployment.*the ingress hosts the models"):
        check_config(with_host)
    with pytest.raises(ValueError, match="colocate"):  # nothing but true, false or ingress
        AppArgs.model_validate({"colocate": "denoiser"})


def test_local_handle_answers_like_a_deployment_handle():
    """The in-ingress model host is called as its deployment would be: `.method.remote(...)`, awaited."""
    from serve.local_host import LocalHandle

    class Host:
        def describe(self) -> dict:
            return {"ok": True}

        async def double(self, x: int) -> int:
            return 2 * x

        def broken(self) -> None:
            raise ValueError("bad call")

    async def main() -> None:
        host = LocalHandle(Host())
        assert await host.describe.remote() == {"ok": True}
        assert await asyncio.wait_for(host.double.remote(3), 5) == 6
        pending = host.broken.remote()  # the error reaches the caller when it awaits, as a handle's does
        with pytest.raises(ValueError, match="bad call"):
            await pending

    asyncio.run(main())
    with pytest.raises(ValueError, match="its own models"):
        LocalHandle(Host()).options(multiplexed_model_id="classifier/1")
    with pytest.raises(AttributeError):
        LocalHandle(Host()).missing


def test_merged_guide_batch_equals_one_call_at_a_time(models):
    """Requests merged by @serve.batch (mixed kinds, sigmas, targets, temperatures, smoothing)."""
    gen = torch.Generator().manual_seed(0)
    base = DEFAULT_PROFILES["noisy"].guide
    variants = [
        ("noisy", base),
        ("clean", DEFAULT_PROFILES["clean"].guide),
        ("noisy", base.model_copy(update={"temperature_sigma_edges": [0.0, 1.0, 100.0], "temperatures": [0.5, 2.0]})),
        ("clean", base.model_copy(update={"smoothing": 0.1, "smoothing_samples": 2})),
        ("clean", base.model_copy(update={"temperature": 3.0})),
    ]
    calls = []
    for i, (kind, settings) in enumerate(variants):
        n = 1 + i % 3
        x = torch.randn(n, 1, models.spec.n_mels, models.spec.frames, generator=gen)
        sigma = torch.rand(n, generator=gen) * 10 + 0.01
        target = torch.randint(0, 10, (n,), generator=gen)
        calls.append(GuideCall(kind, to_wire(x), to_wire(sigma), to_wire(target), settings.model_dump_json()))
    merged = guide_batch(models.guides, calls, models.device)
    for call, got in zip(calls, merged):
        settings = type(base).model_validate_json(call.settings_json)
        x = from_wire(call.inp)
        term = GuideTerm(models.guides[call.kind], from_wire(call.target), settings)
        grad, logp = guide_gradient(term, x, from_wire(call.sigma), x)
        torch.testing.assert_close(from_wire(got.grad), grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(from_wire(got.log_prob), logp, rtol=1e-4, atol=1e-6)
        assert got.grad.flags.c_contiguous and got.grad.dtype == np.float32


def test_reference_guide_calls_carry_their_tables_and_merge(models):
    """Voice-guide calls of several requests (each with its own reference table) merged into one pass
    give each request what its own voice guide gives in-process: the host keeps no request state."""
    from guidance.guides import VoiceStatsGuide

    gen = torch.Generator().manual_seed(2)
    settings = VoiceStatsGuide.default_settings
    hosted = {"speaker-stats": VoiceStatsGuide(models.spec)}
    calls, locals_ = [], []
    for i in range(3):
        guide = VoiceStatsGuide(models.spec)  # this request's own guide, as in-process
        for r in range(1 + i):
            guide.add_reference(f"ref{r}", torch.randn(models.spec.num_samples, generator=gen) * 0.1, models.spec.sample_rate)
        n = 2
        x = torch.randn(n, 1, models.spec.n_mels, models.spec.frames, generator=gen)
        target = torch.tensor([i % (1 + i), 0])
        calls.append(GuideCall("speaker-stats", to_wire(x), to_wire(torch.full((n,), 3.0)), to_wire(target), settings.model_dump_json(),
                               to_wire(guide.references)))
        locals_.append(guide_gradient(GuideTerm(guide, target, settings), x, torch.full((n,), 3.0), x))
    merged = guide_batch(hosted, calls, models.device)
    alone = [guide_batch(hosted, [c], models.device)[0] for c in calls]
    for got, one, (grad, logp) in zip(merged, alone, locals_):
        torch.testing.assert_close(from_wire(got.grad), grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(from_wire(got.log_prob), logp, rtol=1e-4, atol=1e-6)
        assert np.array_equal(one.grad, grad.numpy())  # one request alone: the in-process numbers exactly
    assert float(torch.as_tensor(locals_[0][0]).abs().max()) > 0


def test_merged_denoise_batch_splits_back_per_request(models):
    xs = [torch.randn(n, 1, models.spec.n_mels, models.spec.frames) for n in (1, 3, 2)]
    sigmas = [torch.full((len(x),), s) for x, s in zip(xs, (0.5, 3.0, 40.0))]
    merged = denoise_batch(models.denoiser.model, [(to_wire(x), to_wire(s)) for x, s in zip(xs, sigmas)], models.device)
    for x, s, got in zip(xs, sigmas, merged):
        with torch.no_grad():
            torch.testing.assert_close(from_wire(got), models.denoiser.model(x, s), rtol=1e-4, atol=1e-5)


def test_coalescer_merges_the_backlog_into_the_next_forward():
    import time as _time

    from serve.deployments import _Coalescer

    forwards: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        forwards.append(list(items))
        _time.sleep(0.05)
        return [i * 10 for i in items]

    async def main() -> list:
        c = _Coalescer(run, lambda item: 1, max_items=3)
        first = asyncio.create_task(c.submit([1]))
        await asyncio.sleep(0.01)  # the first forward is running; these three wait for it
        rest = [asyncio.create_task(c.submit([i])) for i in (2, 3)] + [asyncio.create_task(c.submit([4, 5]))]
        return [await first] + [await t for t in rest]

    assert asyncio.run(main()) == [[10], [20], [30], [40, 50]]
    assert forwards == [[1], [2, 3, 4], [5]]  # backlog merged, capped at max_items


def test_coalescer_passes_errors_to_the_callers_and_keeps_working():
    from serve.deployments import _Coalescer

    def run(items: list[int]) -> list[int]:
        if 0 in items:
            raise ValueError("bad item")
        return items

    async def main() -> None:
        c = _Coalescer(run, lambda item: 1, max_items=4)
        with pytest.raises(ValueError, match="bad item"):
            await c.submit([0])
        assert await c.submit([7]) == [7]

    asyncio.run(main())


# ---- `speechguide serve` argument errors (nothing is started) -------------------------------------


@pytest.fixture()
def cli() -> typer.Typer:
    from speechguide.serve_cli import register

    app = typer.Typer(add_completion=False)

    @app.callback()
    def _root() -> None:
        """test root"""

    register(app)
    return app


def test_serve_command_help(cli):
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--config", "--models-dir", "--host", "--port", "--metrics-port", "--blocking"):
        assert option in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "0"], "--port"),
        (["--port", "many"], "port"),
        (["--metrics-port", "70000"], "--metrics-port"),
        (["--port", "8100", "--metrics-port", "8100"], "--metrics-port must differ"),
        (["--config", "/nonexistent/serve.yaml"], "not found"),
        (["--models-dir", "/nonexistent/models"], "does not exist"),
        (["--no-blocking"], "RAY_ADDRESS"),
    ],
)
def test_serve_command_bad_arguments_exit_2(cli, args, message, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    result = CliRunner().invoke(cli, ["serve", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_serve_command_refuses_incomplete_models_dir(cli, tmp_path):
    result = CliRunner().invoke(cli, ["serve", "--models-dir", str(tmp_path)])
    assert result.exit_code == 2 and "denoiser-unet.safetensors" in result.output


def test_serve_command_refuses_config_typos(cli, tmp_path, tiny_models_dir):
    text = DEFAULT_CONFIG_PATH.read_text().replace("max_queued_requests: 64", "max_queued_request: 64")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    result = CliRunner().invoke(cli, ["serve", "--config", str(bad), "--models-dir", str(tiny_models_dir)])
    assert result.exit_code == 2 and "max_queued_request" in result.output


def test_client_resends_a_request_whose_answer_was_lost(monkeypatch):
    """The proxy's bare 500 (an ingress replica died mid-request) and a dropped connection are sent
    again; the app's own JSON errors are not."""
    import httpx

    from serve import client

    monkeypatch.setattr(client, "RESEND_PAUSE_S", 0)
    answers = [httpx.RemoteProtocolError("dropped"), httpx.Response(500, text="Internal Server Error"), httpx.Response(200, json={"samples": []})]

    def post(url, **kwargs):
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return httpx.Response(a.status_code, content=a.content, headers=a.headers, request=httpx.Request("POST", url))

    monkeypatch.setattr(client.httpx, "post", post)
    assert client.generate_remote("http://127.0.0.1:9", {"targets": []}) == {"samples": []}
    assert not answers
    answers[:] = [httpx.Response(503, json={"detail": "the denoiser deployment is unavailable; retry later"}), httpx.Response(200, json={})]
    with pytest.raises(httpx.HTTPStatusError, match="denoiser deployment is unavailable"):
        client.generate_remote("http://127.0.0.1:9", {"targets": []})
    assert len(answers) == 1  # a clear error is the app's answer: not resent
    assert client.lost_answer(httpx.Response(502, text="Bad Gateway")) and not client.lost_answer(httpx.Response(404, text="x"))
