#!/usr/bin/env bash
# Build capsim's wheel, install it in a fresh virtual environment outside the checkout, and check that it
# answers the README's main-job command, runs `python -m capsim`, reads its shipped validation data, and runs
# the notebooks: nothing from the checkout is on the path (the notebooks run from a copy beside the traces
# they read). Usage: scripts/wheel_check.sh PYTHON (the checkout's venv python, which builds the wheel).
set -euo pipefail
PY=${1:?usage: scripts/wheel_check.sh PYTHON}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/capsim-wheel.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT"
"$PY" -m pip wheel --quiet --no-deps -w "$WORK/dist" .
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install --quiet "$WORK"/dist/capsim-*.whl nbclient nbformat ipykernel
cd "$WORK"
"$WORK/venv/bin/python" - <<'PY'
import capsim, capsim.data as d
assert "site-packages" in capsim.__file__, capsim.__file__
for name in d.NAMES:
    assert "site-packages" in str(d.path(name)), d.path(name)
print("capsim from", capsim.__file__)
PY
"$WORK/venv/bin/capsim" predict --model mixtral --hardware dgx-h100 --devices 2 --batch 32 | tee "$WORK/predict.txt"
grep -q "TTFT" "$WORK/predict.txt"
"$WORK/venv/bin/python" -m capsim model list > /dev/null
"$WORK/venv/bin/capsim" hw list --kind system > /dev/null
"$WORK/venv/bin/capsim" validate --published > /dev/null
# serving under load: the ShareGPT table and the serving corpora ship as package data
"$WORK/venv/bin/capsim" serve -m mixtral -H dgx-h100 --devices 8 --request-rate 5 --num-requests 50 --dataset sharegpt \
    | grep -q "TTFT"
"$WORK/venv/bin/capsim" validate --serving > /dev/null
"$WORK/venv/bin/capsim" validate --vllm-serve > /dev/null
mkdir "$WORK/nb"
cp -r "$ROOT/notebooks" "$ROOT/traces" "$WORK/nb/"
"$WORK/venv/bin/python" "$WORK/nb/notebooks/execute.py" --timeout 120
echo "wheel check: ok"
