"""The shipped default profiles, one JSON file per guide kind (noisy.json, clean.json).

They are data, versioned with the code: `python -m tune.pick_defaults --write-profiles` rewrites them from
a validation-split sweep scored by outside ears, and `guidance.guides.profile.DEFAULT_PROFILES` reads them.
"""

from pathlib import Path

DEFAULTS_DIR = Path(__file__).resolve().parent
