#!/usr/bin/env bash
# speechguide cluster status with the project's venv; options pass through (see --help).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
exec "${SPEECHGUIDE:-$root/.venv/bin/speechguide}" cluster status "$@"
