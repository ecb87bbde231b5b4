"""The plan of a request (guidance.plan), without models: what every door decides the same way."""

from __future__ import annotations

import math

import pytest
import torch

from guidance.guides import GuidanceProfile, GuideSettings
from guidance.guides.base import Guide
from guidance.guides.reference import ReferenceGuide
from guidance.pitch_targets import parse_pitch_target, resolve_pitch
from guidance.plan import COMPOSITE_DIGIT_SCALE, Target, check_targets, file_names, plan_request, retargets


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


class _Pitch(Guide):
    """The pitch guide's target bookkeeping without CREPE: labels are resolved lines, relative ones per reference."""

    name = "pitch"
    default_settings = GuideSettings(scale=0.4, sigma_hi=8.0)

    def __init__(self) -> None:
        self.labels, self.lines = [], []

    def add_target(self, text, reference_hz=None, reference_name=None):
        target = parse_pitch_target(text)
        label = target.text if not (reference_name and target.kind != "hz") else f"{target.text}@{reference_name}"
        if label not in self.labels:
            self.lines.append(resolve_pitch(target, reference_hz))
            self.labels.append(label)
        return self.labels.index(label)

    def line(self, index):
        return self.lines[index]

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
    assert plan.rows == [(7, 0, None), (7, 0, None), (7, 1, None), (7, 1, None), (2, 0, None), (2, 0, None), (2, 1, None), (2, 1, None)]
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


def test_pitch_targets_are_rows_of_the_plan_and_relative_ones_resolve_per_reference():
    targets = [Target("digit", "7"), Target("speaker", "a.wav"), Target("speaker", "bb.wav"), Target("pitch", "+12st"), Target("pitch", "150")]
    pitch = _Pitch()
    plan = plan_request(targets, 1, 0, PROFILE, _Digits(), _voice("a.wav", "bb.wav"), pitch_guide=pitch, reference_hz={"a.wav": 100.0, "bb.wav": 120.0})
    assert plan.rows == [(7, 0, 0), (7, 0, 1), (7, 1, 0), (7, 1, 1)] and plan.pitch_labels == ["+12st", "150"]
    assert pitch.labels == ["+12st@a.wav", "150", "+12st@bb.wav"] and plan.named["pitch"].tolist() == [0, 1, 2, 1]
    assert [plan.pitch_lines[k].start_hz for k in plan.named["pitch"].tolist()] == pytest.approx([200.0, 150.0, 240.0, 150.0])
    assert plan.targets_of(2) == [{"guide": "digit", "label": "7"}, {"guide": "speaker", "label": "bb.wav"}, {"guide": "pitch", "label": "+12st"}]
    assert plan.weights == {"digit": 1.0, "speaker": 1.0, "pitch": 1.0} and plan.profile.per_guide["pitch"].sigma_hi == 8.0
    assert plan.file_names() == ["7_000.wav", "7_001.wav", "7_002.wav", "7_003.wav"]

    class _Heard:
        median_hz, voiced_fraction, glide_semitones = 150.0, 0.5, float("nan")

        def error_semitones(self, line):
            return abs(12 * math.log2(self.median_hz / line.median_hz))

    scores = plan.scores(pitch_error=torch.tensor([0.5, float("nan"), 1.0, 0.0]), pitch_heard=[_Heard()] * 4)
    assert scores[0]["pitch_target_hz"] == [200.0, 200.0] and scores[0]["pitch_crepe_error_st"] == 0.5
    assert scores[1]["pitch_crepe_error_st"] is None and scores[1]["pitch_heard_error_st"] == 0.0 and scores[1]["pitch_heard_glide_st"] is None
    assert scores[0]["pitch_heard_error_st"] == pytest.approx(12 * math.log2(200 / 150), abs=1e-3) and scores[0]["pitch_voiced_fraction"] == 0.5
    # pitch only: one row per pitch target, named by sample; rise/fall centre on the default without a reference
    plan = plan_request([Target("pitch", "rise")], 2, 0, PROFILE, _Digits(), None, pitch_guide=_Pitch())
    assert plan.rows == [(None, None, 0)] * 2 and plan.file_names() == ["sample_000.wav", "sample_001.wav"] and "digit" not in plan.named


@pytest.mark.parametrize(
    "targets, error",
    [
        ([Target("pitch", "600")], "50-500 Hz"),
        ([Target("pitch", "wobble")], "pitch target must be"),
        ([Target("digit", "3"), Target("pitch", "+3st")], "speaker=REF.wav"),
    ],
)
def test_bad_pitch_targets_are_refused_before_any_model(targets, error):
    with pytest.raises(ValueError, match=error):
        check_targets(targets)


def test_a_relative_pitch_target_out_of_range_for_its_reference_raises_one_line():
    targets = [Target("speaker", "a.wav"), Target("pitch", "+20st")]
    with pytest.raises(ValueError, match="50-500"):
        plan_request(targets, 1, 0, PROFILE, _Digits(), _voice("a.wav"), pitch_guide=_Pitch(), reference_hz={"a.wav": 200.0})
    with pytest.raises(ValueError, match="needs a pitch guide"):
        plan_request(targets, 1, 0, PROFILE, _Digits(), _voice("a.wav"))


def test_paired_targets_make_one_row_per_position_instead_of_every_combination():
    targets = [Target("digit", "7"), Target("digit", "2"), Target("speaker", "bb.wav"), Target("speaker", "a.wav")]
    plan = plan_request(targets, 2, 0, PROFILE, _Digits(), _voice("a.wav", "bb.wav"), paired=True)
    assert plan.rows == [(7, 1, None), (7, 1, None), (2, 0, None), (2, 0, None)]  # digit k with reference k, each twice
    assert plan.file_names() == ["7_000.wav", "7_001.wav", "2_000.wav", "2_001.wav"]
    with pytest.raises(ValueError, match="same number of targets per guide"):
        plan_request(targets[:1] + targets[2:], 1, 0, PROFILE, _Digits(), _voice("a.wav", "bb.wav"), paired=True)
    # one guide: the same rows either way, in the order given (repeated labels repeat rows)
    digits = [Target("digit", d) for d in "3031"]
    assert plan_request(digits, 1, 0, PROFILE, _Digits(), paired=True).rows == plan_request(digits, 1, 0, PROFILE, _Digits()).rows
    assert plan_request(digits, 1, 0, PROFILE, _Digits()).named["digit"].tolist() == [3, 0, 3, 1]


def test_pitch_references_are_the_speakers_a_relative_or_contour_target_needs():
    from guidance.plan import pitch_references

    speakers = [Target("speaker", "a.wav"), Target("speaker", "b.wav"), Target("speaker", "a.wav")]
    assert pitch_references([*speakers, Target("pitch", "140")]) == []
    assert pitch_references([*speakers, Target("pitch", "rise")]) == ["a.wav", "b.wav"]
    assert pitch_references([Target("digit", "3"), Target("pitch", "+3st"), speakers[1]]) == ["b.wav"]
