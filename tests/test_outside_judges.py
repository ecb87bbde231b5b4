"""Outside judges (pocketsphinx digit ASR, DNSMOS) on real FSDD test clips, offline.

Twenty clips, chosen by a fixed rule (every digit, every speaker, every test take) before they
were measured: the recognizer got 13/20 on them (chance: 2/20), the bound below is 10/20.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from guidance.data import FSDD_SPEAKERS, load_wave
from guidance.features import fit_length

pytest.importorskip("pocketsphinx", reason="outside judges need pocketsphinx>=5")
pytest.importorskip("speechmos", reason="outside judges need speechmos")
pytest.importorskip("onnxruntime", reason="outside judges need onnxruntime")

from outside_judges import AsrSettings, DigitRecognizer, Dnsmos, digit_of_name, judge_wav_dir, judge_waves  # noqa: E402
from outside_judges._deps import MissingJudgeDependency, require  # noqa: E402
from outside_judges.dnsmos import WINDOW, WINDOW_S, tile_to_window  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLIP_NAMES = [f"{d}_{FSDD_SPEAKERS[(d + k) % 6]}_{(d + k) % 5}.wav" for k in (0, 3) for d in range(10)]


@pytest.fixture(scope="module")
def clip_paths(fsdd_root: Path) -> list[Path]:
    paths = [fsdd_root / "recordings" / n for n in CLIP_NAMES]
    assert all(p.is_file() for p in paths)
    return paths


@pytest.fixture(scope="module")
def recognizer() -> DigitRecognizer:
    return DigitRecognizer()


@pytest.fixture(scope="module")
def dnsmos() -> Dnsmos:
    return Dnsmos()


def test_recognizer_hears_real_test_digits_well_above_chance(recognizer, clip_paths):
    said = [recognizer.recognize(p) for p in clip_paths]  # 8 kHz WAVs, resampled inside
    right = [s == int(p.name[0]) for s, p in zip(said, clip_paths)]
    assert sum(right) >= 10, list(zip(CLIP_NAMES, said))
    assert len({int(p.name[0]) for p, r in zip(clip_paths, right) if r}) >= 6  # not one digit said to all


def test_recognizer_takes_tensors_at_any_rate(recognizer, clip_paths):
    path = clip_paths[0]  # 0_george_0: recognized as 0
    from_file = recognizer.recognize(path)
    at_16k = load_wave(path, 16000)
    at_22k = load_wave(path, 22050)
    assert recognizer.recognize(at_16k, 16000) == from_file == 0
    assert recognizer.recognize(at_22k, 22050) == 0
    assert recognizer.recognize_many(torch.stack([at_16k, at_16k]), 16000) == [0, 0]
    assert recognizer.recognize(torch.zeros(16000), 16000) is None  # silence: no digit
    with pytest.raises(ValueError, match="sample_rate"):
        recognizer.recognize(at_16k)
    with pytest.raises(ValueError, match="mono"):
        recognizer.recognize(torch.zeros(2, 3, 100), 16000)
    with pytest.raises(ValueError, match="search"):
        DigitRecognizer(AsrSettings(search="lm"))  # type: ignore[arg-type]


def test_dnsmos_rates_speech_above_noise_and_silence(dnsmos, clip_paths):
    speech = [dnsmos.score(p) for p in clip_paths[:10]]
    noise = dnsmos.score(torch.randn(16000, generator=torch.Generator().manual_seed(0)), 16000)
    silence = dnsmos.score(torch.zeros(16000), 16000)
    speech_ovrl = float(np.mean([s.ovrl for s in speech]))
    # measured: speech 2.18 on average (single clips 1.6-2.8), white noise 1.06 (SIG 1.21),
    # digital silence 1.84 (a clean background, BAK 3.47, but no speech: SIG 2.51)
    assert speech_ovrl > 1.95
    assert noise.ovrl < 1.5 and noise.sig < 1.6
    assert silence.ovrl < speech_ovrl - 0.2
    assert speech_ovrl > noise.ovrl + 0.7
    for s in (*speech, noise, silence):
        assert all(1.0 <= v <= 5.0 for v in s.to_dict().values())


def test_dnsmos_is_deterministic_and_matches_speechmos(dnsmos, clip_paths):
    wave = load_wave(clip_paths[1], 16000)
    assert dnsmos.score(wave, 16000) == dnsmos.score(wave, 16000)
    # speechmos doubles a short clip until it fills the 9.01 s window; "first" scores its first window
    tiled = tile_to_window(wave.numpy())
    assert len(tiled) >= WINDOW and np.array_equal(tiled[: len(wave)], tiled[len(wave) : 2 * len(wave)])
    # windows="speechmos" averages the same hops as speechmos.dnsmos.run (which needs librosa)
    pytest.importorskip("librosa")
    from speechmos import dnsmos as reference

    short = fit_length(wave, 11_000)  # doubles to 11 s: two 1 s hops, so the hop average is exercised
    assert int(np.floor(len(tile_to_window(short.numpy())) / 16000) - WINDOW_S) + 1 == 2
    ours = Dnsmos(windows="speechmos", normalize=False).score(short, 16000)
    theirs = reference.run(short.numpy(), 16000)
    assert ours.sig == pytest.approx(theirs["sig_mos"], abs=1e-4)
    assert ours.bak == pytest.approx(theirs["bak_mos"], abs=1e-4)
    assert ours.ovrl == pytest.approx(theirs["ovrl_mos"], abs=1e-4)


def test_names_give_targets():
    assert digit_of_name("7_george_3.wav") == 7
    assert digit_of_name("/x/y/0_000.wav") == 0
    assert digit_of_name("4.wav") == 4
    assert digit_of_name("12_x.wav") is None
    assert digit_of_name("george_7.wav") is None


def test_judge_wav_dir_reads_targets_from_names(tmp_path, clip_paths, recognizer, dnsmos):
    shutil.copy(clip_paths[0], tmp_path / "0_george_0.wav")  # recognized as 0
    shutil.copy(clip_paths[1], tmp_path / "1_000.wav")  # generate's naming; recognized as 1
    shutil.copy(clip_paths[2], tmp_path / "unlabelled.wav")
    (tmp_path / "notes.txt").write_text("not audio")
    report = judge_wav_dir(tmp_path, recognizer=recognizer, dnsmos=dnsmos)
    by_name = {Path(c["name"]).name: c for c in report["clips"]}
    assert set(by_name) == {"0_george_0.wav", "1_000.wav", "unlabelled.wav"}
    assert [by_name[n]["target"] for n in ("0_george_0.wav", "1_000.wav", "unlabelled.wav")] == [0, 1, None]
    assert report["n"] == 3 and report["n_with_target"] == 2
    assert report["asr_accuracy"] == 1.0 and report["asr_accuracy_per_digit"] == {0: 1.0, 1: 1.0}
    assert report["sig"] == pytest.approx(np.mean([c["sig"] for c in report["clips"]]))
    assert set(report["seconds_per_clip"]) == {"asr", "dnsmos", "total"}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no .wav"):
        judge_wav_dir(empty)


def test_judge_waves_batch_and_checks(clip_paths, recognizer, dnsmos):
    waves = torch.stack([fit_length(load_wave(p, 16000), 12_000) for p in clip_paths[:2]])
    report = judge_waves(waves, 16000, targets=[0, 1], recognizer=recognizer, dnsmos=dnsmos)
    assert report["n"] == 2 and report["asr_accuracy"] is not None
    assert judge_waves(waves, 16000, recognizer=recognizer, dnsmos=dnsmos)["asr_accuracy"] is None
    with pytest.raises(ValueError, match="targets"):
        judge_waves(waves, 16000, targets=[0], recognizer=recognizer, dnsmos=dnsmos)
    with pytest.raises(ValueError, match="digits"):
        judge_waves(waves, 16000, targets=[0, 12], recognizer=recognizer, dnsmos=dnsmos)
    with pytest.raises(ValueError, match=r"\(n, samples\)"):
        judge_waves(waves[0], 16000)


def test_cli_prints_table_and_writes_json(tmp_path, clip_paths, capsys):
    from outside_judges.__main__ import main

    shutil.copy(clip_paths[0], tmp_path / clip_paths[0].name)
    out = tmp_path / "report" / "judges.json"
    assert main([str(tmp_path), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^\s+1\s+1\.000\s+0\s", printed, re.M), printed
    assert '"asr_accuracy": 1.0' in out.read_text()
    assert main([str(tmp_path / "missing.wav")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_missing_package_says_what_to_install():
    with pytest.raises(MissingJudgeDependency, match=r"pip install not-a-real-pkg"):
        require("not_a_real_module_xyz", "not-a-real-pkg", "a test judge")


def test_guidance_does_not_import_outside_judges():
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "guidance").rglob("*.py")
        if re.search(r"^\s*(from|import)\s+outside_judges", p.read_text(), re.M)
    ]
    assert offenders == []
