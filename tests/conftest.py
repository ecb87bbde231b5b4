"""Shared fixtures: the real FSDD copy beside the project, and tiny randomly initialised models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_FSDD = ROOT.parent / "shared" / "data" / "fsdd"


def fsdd_dir() -> Path:
    env = os.environ.get("SPEECHGUIDE_FSDD_DIR")
    return Path(env) if env else SHARED_FSDD


@pytest.fixture(scope="session")
def fsdd_root() -> Path:
    root = fsdd_dir()
    if not (root / "recordings").is_dir():
        pytest.fail(f"FSDD not found at {root}; set SPEECHGUIDE_FSDD_DIR")
    return root


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Feature caches and MLflow stores go to temp dirs unless the caller chose a cache."""
    os.environ.setdefault("SPEECHGUIDE_CACHE", str(ROOT / ".cache"))
    if "SPEECHGUIDE_FSDD_DIR" not in os.environ and (SHARED_FSDD / "recordings").is_dir():
        os.environ["SPEECHGUIDE_FSDD_DIR"] = str(SHARED_FSDD)  # CLI subprocesses find it as under `make test`
    # The Serve apps tests start are open on loopback unless a test gives them a token; one from the
    # developer's shell would otherwise reach their replicas (a local cluster inherits the environment).
    os.environ.pop("SPEECHGUIDE_API_TOKEN", None)
    # Under parallel workers (`make test`) each in-process torch gets one thread of the shared cores.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(1 if workers > 1 else min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def spec(fsdd_root: Path):
    from guidance.spec import project_spec

    return project_spec(str(fsdd_root))


def tiny_models(directory: Path, spec) -> Path:
    """Randomly initialised, tiny versions of every model kind, saved as a models directory."""
    from guidance.data import DIGITS, FSDD_SPEAKERS
    from guidance.diffusion import EDMPrecond
    from guidance.models import ClassifierConfig, JudgeConfig, LogMelClassifier, TDNNJudge, UNet, UNetConfig, save_model
    from guidance.models.checkpoint import config_dict
    from guidance.models.vocoder import NeuralVocoder, VocoderConfig

    torch.manual_seed(0)
    unet_cfg = UNetConfig(channels=(8, 16), emb_dim=16)
    save_model(directory / "denoiser-unet.safetensors", EDMPrecond(UNet(unet_cfg)), "denoiser-unet", {**config_dict(unet_cfg), "sigma_data": 1.0}, spec)
    for name, noisy in (("classifier-noisy", True), ("classifier-clean", False)):
        cfg = ClassifierConfig(channels=(8, 16), emb_dim=16, noise_conditioned=noisy)
        save_model(directory / f"{name}.safetensors", LogMelClassifier(cfg), "classifier", config_dict(cfg), spec, DIGITS, "digit")
    for task, labels in (("digit", DIGITS), ("speaker", FSDD_SPEAKERS)):
        cfg = JudgeConfig(num_classes=len(labels), n_mels=spec.n_mels, channels=16, embed_dim=16)
        save_model(directory / f"judge-{task}.safetensors", TDNNJudge(cfg).eval(), "judge", config_dict(cfg), spec, labels, task)
    vocoder_cfg = VocoderConfig.for_spec(spec, channels=16, blocks=1)
    save_model(directory / "vocoder.safetensors", NeuralVocoder(vocoder_cfg).eval(), "vocoder", config_dict(vocoder_cfg), spec)
    return directory


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory, spec) -> Path:
    return tiny_models(tmp_path_factory.mktemp("tiny-models"), spec)


@pytest.fixture(scope="session")
def shared_mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """One `mlflow server` for the modules that only log and register, each under its own names (a server takes
    seconds of imports to start here); modules that stop their server start their own (tests/mlflow_server.py)."""
    from mlflow_server import running_mlflow_server

    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


# ---- parallel workers ------------------------------------------------------------------------------------
# `make test` runs pytest-xdist. The modules that start a real Ray cluster (Serve apps, Tune sweeps, the
# three-node cluster) are one unit of work: one worker runs them one after another, as a serial run does, so
# two clusters never compete for the cores or share a machine-wide resource; every other module is a unit of
# its own and runs on the other workers meanwhile. A serial run spends much of its Ray time waiting (a profile
# of test_serve.py alone: the machine's two cores 63% busy), which the other modules fill. The Ray unit is
# collected first so that it starts at once: it is the longest.
RAY_CLUSTER_MODULES = frozenset(
    {"test_cluster_local.py", "test_parity.py", "test_serve.py", "test_serve_registry.py", "test_tune.py"}
)


def work_unit(nodeid: str) -> str:
    """The unit a test is scheduled with: "ray-cluster" for the Ray modules, else its module."""
    module = nodeid.split("::", 1)[0]
    return "ray-cluster" if Path(module).name in RAY_CLUSTER_MODULES else module


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: work_unit(item.nodeid) != "ray-cluster")  # stable: each module keeps its order


# The Ray unit's tests hold live clusters to deadlines (a killed replica replaced within a window). So a worker
# running any other module lowers its own priority (nice 10, inherited by the servers and CLIs it starts), and
# the Ray processes in the same scheduling group get the cores first; the rest of the suite fills what they
# leave idle. Fresh clones (Dec 1): the slowest Ray setups (test_parity, test_serve_registry) took 102 and
# 101 s without it, 63-66 and 81-85 s with it, the whole run 1049 s without, 1011-1050 s with.
OTHER_MODULES_NICENESS = 10


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1 and work_unit(item.nodeid) != "ray-cluster":
        current = os.nice(0)
        if current < OTHER_MODULES_NICENESS:
            os.nice(OTHER_MODULES_NICENESS - current)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Whole units to each worker, in collection order (xdist's `loadgroup` would do it with markers, but
    pytest 9.2 no longer reads the node id it rewrites)."""
    from xdist.scheduler import LoadScopeScheduling

    class RayClusterModulesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    config.option.loadscopereorder = False
    return RayClusterModulesTogether(config, log)


# ---- ending the test process ---------------------------------------------------------------------------
# A fresh-clone `make test` (Dec 1) passed every test, printed its summary and then died with SIGSEGV while
# the interpreter shut down: the kernel logged an instruction fetch from the heap in a native thread
# ("segfault at X ip X ... error 15"), i.e. a thread left by a native library (Ray's, torch's or another
# extension's) running into code already freed by finalization. Nothing of the run is lost by then, but the
# exit status was 139 and CI failed. So once pytest has reported (after every other plugin's unconfigure),
# the process ends with pytest's own exit status and skips finalization. SPEECHGUIDE_TEST_FINALIZE=1 keeps
# the normal shutdown, for whoever hunts that thread.
_EXIT_STATUS: list[int] = []


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    import sys

    if _EXIT_STATUS and os.environ.get("SPEECHGUIDE_TEST_FINALIZE") != "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])
