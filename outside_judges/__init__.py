"""Outside judges: off-the-shelf models, trained by nobody on this project, that listen to waveforms.

The project's own classifiers judge log-Mels with weights trained on the same data as the
generator; these judges hear the audio that leaves the vocoder and owe nothing to our splits:

* `digits_asr`: PocketSphinx 5's US-English model with a ten-word grammar -> which digit was said.
* `dnsmos`: Microsoft's DNSMOS P.835 (shipped by `speechmos`) -> SIG / BAK / OVRL quality.
* `report`: both over a batch of waves or a folder of WAVs, with a summary.

Their weights ship inside their PyPI packages: nothing is downloaded at run time.
`guidance/` does not import this package; evaluation code that wants it imports it.
"""

from outside_judges.digits_asr import DIGIT_WORDS, AsrSettings, DigitRecognizer
from outside_judges.dnsmos import Dnsmos, MosScores
from outside_judges.report import digit_of_name, judge_wav_dir, judge_wav_files, judge_waves

__all__ = [
    "DIGIT_WORDS",
    "AsrSettings",
    "DigitRecognizer",
    "Dnsmos",
    "MosScores",
    "digit_of_name",
    "judge_wav_dir",
    "judge_wav_files",
    "judge_waves",
]
