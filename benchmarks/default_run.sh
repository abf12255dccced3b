#!/usr/bin/env bash
# Times the embedded default (`python -m imgexp`: small_cnn on digits, 10 epochs, MLflow on) from a
# fresh directory, as a new user runs it. Run by hand: bash benchmarks/default_run.sh
set -euo pipefail
dir=$(mktemp -d)
cd "$dir"
/usr/bin/time -f "wall %e s, max RSS %M KB" python -m imgexp progress=false 2>&1 | grep -E "wall|test/acc|summary"
rm -rf "$dir"
