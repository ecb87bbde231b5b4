"""The shipped default profiles, one JSON file per guide kind (noisy.json, clean.json).

They are data, versioned with the code: `python -m tune.pick_defaults --write-profiles` rewrites them from
a validation-split sweep scored by outside ears, and `guidance.guides.profile.DEFAULT_PROFILES` reads them.
pitch.json is the pitch guide's (its `guide` settings are the pitch term's defaults in any composite;
`guidance.guides.pitch.default_pitch_settings` reads it; reports/pitch/sweep.md says how it was picked).
"""

from pathlib import Path

DEFAULTS_DIR = Path(__file__).resolve().parent
