"""The plan of a request (guidance.plan), without models: what every door decides the same way."""

from __future__ import annotations

import pytest
import torch

from guidance.guides import GuidanceProfile, GuideSettings
from guidance.guides.base import Guide
from guidance.guides.reference import ReferenceGuide
from guidance.plan import COMPOSITE_DIGIT_SCALE, Target, file_names, plan_request, retargets


class _Digits(Guide):
    name = "digit"
    labels = [str(d) for d in range(10)]

    def log_prob(self, inp, sigma, target, temperature):  # pragma: no cover - the plan never calls it
        raise AssertionError


class _Voice(ReferenceGuide):
    """Rows are given directly: a reference's features are its name's length, twice (enough to check retargeting)."""

    kind = "stats"
    default_settings = GuideSettings(scale=0.1, norm_scaling=True, sigma_lo=1.0)

    def __init__(self) -> None:
        self.spec, self.device, self.labels, self.references = None, torch.device("cpu"), [], torch.empty(0, 2)

    def reference_features(self, wave, sample_rate):  # pragma: no cover
        raise AssertionError

    def add(self, name: str) -> None:
        self.references = torch.cat([self.references, torch.full((1, 2), float(len(name)))])
        self.labels.append(name)

    def log_prob(self, inp, sigma, target, temperature):  # pragma: no cover
        raise AssertionError


PROFILE = GuidanceProfile(guide=GuideSettings(scale=3.0))


def _voice(*names: str) -> _Voice:
    v = _Voice()
    for n in names:
        v.add(n)
    return v


def test_rows_are_every_digit_and_reference_combination_num_times_in_order():
    targets = [Target("digit", "7"), Target("digit", "2"), Target("speaker", "a.wav"), Target("speaker", "bb.wav")]
    plan = plan_request(targets, 2, 5, PROFILE, _Digits(), _voice("a.wav", "bb.wav"), weights={"speaker": 2.0})
    assert plan.rows == [(7, 0), (7, 0), (7, 1), (7, 1), (2, 0), (2, 0), (2, 1), (2, 1)]
    assert plan.named["digit"].tolist() == [7, 7, 7, 7, 2, 2, 2, 2] and plan.named["speaker"].tolist() == [0, 0, 1, 1] * 2
    assert plan.file_names() == ["7_000.wav", "7_001.wav", "7_002.wav", "7_003.wav", "2_000.wav", "2_001.wav", "2_002.wav", "2_003.wav"]
    assert plan.weights == {"digit": 1.0, "speaker": 2.0}
    assert plan.targets_of(2) == [{"guide": "digit", "label": "7"}, {"guide": "speaker", "label": "bb.wav"}]
    # the composite's digit scale, and the voice guide's own settings as the profile's speaker entry
    assert plan.profile.guide.scale == COMPOSITE_DIGIT_SCALE and plan.profile.per_guide["speaker"].norm_scaling
    assert plan_request(targets, 1, 5, PROFILE, _Digits(), _voice("a.wav", "bb.wav"), scale_set=True).profile.guide.scale == 3.0
    assert plan_request(targets, 1, 5, PROFILE, _Digits(), _voice("a.wav", "bb.wav"), digit_kind="clean").profile.guide.scale == 3.0
    assert torch.equal(plan.noise(type("S", (), {"n_mels": 4, "frames": 3})()), plan.noise(type("S", (), {"n_mels": 4, "frames": 3})()))


def test_speaker_only_samples_are_named_by_sample_and_digit_only_has_no_speaker():
    plan = plan_request([Target("speaker", "a.wav")], 2, 0, PROFILE, _Digits(), _voice("a.wav"))
    assert plan.file_names() == ["sample_000.wav", "sample_001.wav"] and "digit" not in plan.named
    plan = plan_request([Target("digit", "1")], 1, 0, PROFILE, _Digits(), None, digit_kind="none")
    assert plan.guided() == {} and plan.file_names() == ["1_000.wav"] and plan.voice_kind is None
    assert file_names(["3", None, "3"]) == ["3_000.wav", "sample_000.wav", "3_001.wav"]


def test_retargeting_moves_each_row_by_the_word_offsets():
    offsets = torch.arange(10, dtype=torch.float32).unsqueeze(1).repeat(1, 2)  # digit d adds d to both features
    targets = [Target("digit", "7"), Target("speaker", "abc")]
    assert retargets(targets, "stats", offsets) and not retargets(targets, "encoder", offsets) and not retargets(targets[1:], "stats", offsets)
    voice = _voice("abc")
    plan = plan_request(targets, 1, 0, PROFILE, _Digits(), voice, said=torch.tensor([4]), offsets=offsets)
    assert plan.retargeted and voice.references[plan.named["speaker"][0]].tolist() == [3 - 4 + 7.0] * 2
    assert plan.speaker_labels == ["abc"]  # the manifest names the reference, not the retargeted row
    with pytest.raises(ValueError, match="retargeting needs"):
        plan_request(targets, 1, 0, PROFILE, _Digits(), _voice("abc"), offsets=offsets)


@pytest.mark.parametrize(
    "targets, weights, error",
    [
        ([Target("emotion", "happy")], {}, "unknown guide 'emotion'"),
        ([Target("digit", "7")], {"speaker": 1.0}, "no target names the guide 'speaker'"),
        ([Target("digit", "7")], {"digit": float("nan")}, "finite number"),
        ([Target("digit", "12")], {}, "no label '12'"),
    ],
)
def test_bad_requests_raise_one_line(targets, weights, error):
    with pytest.raises((ValueError, KeyError), match=error):
        plan_request(targets, 1, 0, PROFILE, _Digits(), None, weights=weights)
