"""The HTTP API's bearer token without a cluster: the check, where the token comes from, when the app
refuses to start, what the client and the CLI send. tests/test_serve.py checks it over real HTTP."""

from __future__ import annotations

import copy
import re

import httpx
import pytest
import typer
from typer.testing import CliRunner

from serve import auth
from serve.auth import AuthConfigError, check_bearer, check_exposure, is_loopback, resolve_token
from serve.config import DEFAULT_CONFIG_PATH, AppArgs, check_config, check_http_auth, load_config_file, with_overrides

TOKEN = "k3y-" + "A" * 20
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def _no_token_in_env(monkeypatch):
    monkeypatch.delenv("SPEECHGUIDE_API_TOKEN", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost", "LocalHost", " 127.0.0.1 "])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "192.168.0.7", "example.com", "localhost.example.com", "", None])
def test_other_hosts_are_not_loopback(host):
    assert not is_loopback(host)


def test_bearer_check():
    assert check_bearer(f"Bearer {TOKEN}", TOKEN) is None
    assert check_bearer(f"bearer   {TOKEN} ", TOKEN) is None  # the scheme is case-insensitive
    for header in (None, "", "Bearer", "Bearer  ", f"Basic {TOKEN}", TOKEN):
        detail, challenge = check_bearer(header, TOKEN)
        assert detail.startswith("missing bearer token") and challenge.startswith("Bearer")
    for header in (f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", "Bearer " + "é" * 24, f"Bearer {TOKEN.lower()}"):
        detail, challenge = check_bearer(header, TOKEN)
        assert detail == "invalid bearer token" and challenge.startswith("Bearer") and 'error="invalid_token"' in challenge
        assert TOKEN not in detail


def test_bearer_check_compares_in_constant_time(monkeypatch):
    calls = []

    def spy(a, b):
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert check_bearer(f"Bearer {TOKEN}", TOKEN) is None
    assert check_bearer("Bearer nope", TOKEN) is not None
    assert calls == [(TOKEN.encode(), TOKEN.encode()), (b"nope", TOKEN.encode())]


def test_token_from_env_then_config():
    assert resolve_token(None, environ={}) is None
    assert resolve_token(None, environ={"SPEECHGUIDE_API_TOKEN": "  "}) is None  # empty is unset
    assert resolve_token(TOKEN, environ={}) == TOKEN
    other = "B" * 32
    assert resolve_token(TOKEN, environ={"SPEECHGUIDE_API_TOKEN": other}) == other  # the environment wins
    assert resolve_token(None, "MY_TOKEN", environ={"MY_TOKEN": other, "SPEECHGUIDE_API_TOKEN": TOKEN}) == other


@pytest.mark.parametrize("bad", ["short", "has space in it, long enough", "ünïcødé-ünïcødé-ünïcødé", 'quote"quote"quote"quote'])
def test_unusable_tokens_are_refused_without_being_echoed(bad):
    with pytest.raises(AuthConfigError) as err:
        resolve_token(None, environ={"SPEECHGUIDE_API_TOKEN": bad})
    assert bad not in str(err.value) and "$SPEECHGUIDE_API_TOKEN" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(AuthConfigError, match="args.auth.token"):
        resolve_token(bad, environ={})


def test_open_api_only_on_loopback():
    check_exposure("127.0.0.1", None)
    check_exposure("0.0.0.0", TOKEN)
    for host in ("0.0.0.0", "10.0.0.5", None):
        with pytest.raises(AuthConfigError) as err:
            check_exposure(host, None)
        message = str(err.value)
        assert "$SPEECHGUIDE_API_TOKEN" in message and "not loopback" in message and "\n" not in message


def test_config_check_refuses_an_open_api_off_loopback():
    data = load_config_file(DEFAULT_CONFIG_PATH)
    check_http_auth(check_config(data), environ={})  # the shipped config: loopback, no token needed
    exposed = check_config(with_overrides(data, host="0.0.0.0"))
    with pytest.raises(AuthConfigError, match="0.0.0.0"):
        check_http_auth(exposed, environ={})
    check_http_auth(exposed, environ={"SPEECHGUIDE_API_TOKEN": TOKEN})
    check_http_auth(check_config(with_overrides(data, host="0.0.0.0", args={"auth": {"token": TOKEN}})), environ={})
    bad = copy.deepcopy(data)
    bad["applications"][0]["args"]["auth"] = {"tokn": TOKEN}
    with pytest.raises(ValueError, match="tokn"):
        check_config(bad)


def test_the_token_stays_out_of_reprs():
    args = AppArgs.model_validate({"auth": {"token": TOKEN}})
    assert args.auth.token == TOKEN
    assert TOKEN not in repr(args) and TOKEN not in str(args)


def test_ingress_refuses_to_start_open_off_loopback(monkeypatch):
    """The replica's own start-up check, with what the Serve controller says the proxies bind (patched here)."""
    from serve import ingress

    def token(args: dict):
        return ingress.api_token(AppArgs.model_validate(args).auth)

    monkeypatch.setattr(ingress, "proxy_host", lambda: "0.0.0.0")
    with pytest.raises(AuthConfigError, match="not loopback"):
        token({})
    assert token({"auth": {"token": TOKEN}}) == TOKEN
    monkeypatch.setenv("SPEECHGUIDE_API_TOKEN", "C" * 24)
    assert token({}) == "C" * 24
    monkeypatch.setenv("MY_TOKEN", "F" * 24)
    assert token({"auth": {"token_env": "MY_TOKEN"}}) == "F" * 24
    monkeypatch.delenv("SPEECHGUIDE_API_TOKEN")
    monkeypatch.setattr(ingress, "proxy_host", lambda: "127.0.0.1")
    assert token({}) is None  # open on loopback
    monkeypatch.setattr(ingress, "proxy_host", lambda: None)  # could not ask: not known to be loopback
    with pytest.raises(AuthConfigError, match="could not be determined"):
        token({})


# ---- the client and the CLI ----------------------------------------------------------------------


def _recording_post(monkeypatch, status: int = 200, body: dict | None = None) -> list[dict]:
    from serve import client

    sent: list[dict] = []

    def post(url: str, **kwargs) -> httpx.Response:
        sent.append(kwargs["headers"])
        return httpx.Response(status, json=body or {"samples": []}, request=httpx.Request("POST", url))

    monkeypatch.setattr(client.httpx, "post", post)
    return sent


def test_client_sends_the_token_from_the_argument_or_the_environment(monkeypatch):
    from serve.client import generate_remote

    sent = _recording_post(monkeypatch)
    generate_remote("http://127.0.0.1:9", {"targets": []})
    generate_remote("http://127.0.0.1:9", {"targets": []}, token=TOKEN)
    monkeypatch.setenv("SPEECHGUIDE_API_TOKEN", "D" * 20)
    generate_remote("http://127.0.0.1:9", {"targets": []})
    assert "Authorization" not in sent[0]
    assert sent[1]["Authorization"] == f"Bearer {TOKEN}" and sent[2]["Authorization"] == "Bearer " + "D" * 20


def test_client_reports_401_as_a_refusal(monkeypatch):
    from serve.client import generate_remote

    _recording_post(monkeypatch, 401, {"detail": "missing bearer token: send the header 'Authorization: Bearer <token>'"})
    with pytest.raises(ValueError, match=r"\(401\): missing bearer token"):
        generate_remote("http://127.0.0.1:9", {"targets": []})


def test_cli_generate_url_sends_the_token(monkeypatch, tmp_path):
    from speechguide.cli import app

    sent = _recording_post(monkeypatch, body={"samples": [], "models": {}, "profile": {}})
    base = ["generate", "--target", "digit=3", "--steps", "2", "--url", "http://127.0.0.1:9"]
    result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "a"), "--api-token", TOKEN])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "b")], env={"SPEECHGUIDE_API_TOKEN": "E" * 20})
    assert result.exit_code == 0, result.output
    assert [h.get("Authorization") for h in sent] == [f"Bearer {TOKEN}", "Bearer " + "E" * 20]
    assert TOKEN not in (tmp_path / "a" / "manifest.json").read_text()


@pytest.fixture()
def serve_cli() -> typer.Typer:
    from speechguide.serve_cli import register

    app = typer.Typer(add_completion=False)

    @app.callback()
    def _root() -> None:
        """test root"""

    register(app)
    return app


def _text(output: str) -> str:
    """CliRunner's output without the error box's frame and line breaks."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", output).split())


def test_serve_command_refuses_a_non_loopback_host_without_a_token(serve_cli, tiny_models_dir):
    """Before Ray starts: exit 2 and the one-line reason (nothing is deployed)."""
    result = CliRunner().invoke(serve_cli, ["serve", "--host", "0.0.0.0", "--models-dir", str(tiny_models_dir)])
    assert result.exit_code == 2, result.output
    assert "--host 0.0.0.0: the HTTP API would be open to the network" in _text(result.output)
    assert "$SPEECHGUIDE_API_TOKEN" in _text(result.output)
    weak = "weak-token"
    result = CliRunner().invoke(
        serve_cli, ["serve", "--host", "0.0.0.0", "--models-dir", str(tiny_models_dir)], env={"SPEECHGUIDE_API_TOKEN": weak}
    )
    assert result.exit_code == 2 and "at least 16 characters" in _text(result.output) and weak not in result.output


def test_serve_command_one_line_error_in_a_subprocess(tiny_models_dir):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("SPEECHGUIDE_API_TOKEN", "RAY_ADDRESS")}
    r = subprocess.run(
        [sys.executable, "-m", "speechguide", "serve", "--host", "0.0.0.0", "--models-dir", str(tiny_models_dir)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert r.returncode == 2 and "SPEECHGUIDE_API_TOKEN" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_serve_command_stops_on_sigterm_as_on_ctrl_c():
    """Container runtimes stop with SIGTERM: the serve command's wait loop takes it as Ctrl-C (then shuts Serve
    down and exits 0) instead of dying in Ray's handler."""
    import subprocess
    import sys

    code = (
        "import os, signal, sys, time\n"
        "from speechguide.serve_cli import sigterm_as_interrupt\n"
        "sigterm_as_interrupt()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "except KeyboardInterrupt:\n"
        "    print('stopping')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "stopping", (r.returncode, r.stderr[-500:])  # not -SIGTERM: it died
