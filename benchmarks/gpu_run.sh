#!/usr/bin/env bash
# The GPU figures of issue 6 in one call on a lent GPU machine (see
# benchmarks/README.md): Pyro-vs-torch step cost at three batch sizes, then
# fits to convergence at 1,000,000 subjects x 20 visits and the app-like
# simulator scaled 100x (117,400 subjects x 105 days x 3 outcomes), and
# seconds per epoch at 8,000, 80,000 and 1,000,000 subjects.  Pyro
# wheels travel in .whl (the machine has torch but not Pyro); logs and JSON
# go to $OUT when it is set, else to benchmarks/results.
# Dry run on a CPU: DEVICE=cpu SUBJECTS=2000 APP_SCALE=1 bash benchmarks/gpu_run.sh
# Some steps only: STEPS="converge_subjects scaling" bash benchmarks/gpu_run.sh
set -u
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # pyro_dgmm from this checkout
DEVICE=${DEVICE:-cuda} SUBJECTS=${SUBJECTS:-1000000} APP_SCALE=${APP_SCALE:-100}
cd "$(dirname "$0")"
OUT=${OUT:-$PWD/results}
PYTHON=${PYTHON:-python3}
SUFFIX=$([ "$DEVICE" = cpu ] || echo "_${DEVICE%%:*}")  # speed_scale.py names its GPU results so
CARD=$DEVICE  # results are named speed_scale_gpu_<card>_<step>.json, e.g. card h100
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -o -i '[A-Z][0-9]\{2,4\}' | head -1 | tr A-Z a-z)
fi
$PYTHON -c "import torch, pyro, pandas; print('torch', torch.__version__, 'pyro', pyro.__version__, 'pandas', pandas.__version__)"
STEPS=${STEPS:-overhead converge_subjects converge_app scaling}
step() {  # step NAME SECONDS ARGS...: one run of speed_scale.py; its log into $OUT; its exit status
  local name=$1 limit=$2; shift 2
  [[ " $STEPS " == *" $name "* ]] || return 1
  timeout -k 10 "$limit" $PYTHON speed_scale.py "$@" --device "$DEVICE" 2>&1 | tr '\r' '\n' > "$OUT/$name.log"
  local status=${PIPESTATUS[0]}
  echo "== $name: exit $status"
  grep -v -e "fitting DGMM" -e '^\s*$' "$OUT/$name.log" | tail -6 | cut -c1-400
  grep "fitting DGMM" "$OUT/$name.log" | tail -1
  pkill -f speed_scale.py 2>/dev/null
  return "$status"
}
if step overhead "${LIMIT_OVERHEAD:-70}" --parts overhead; then
  cp results/speed_pyro_overhead$SUFFIX.json "$OUT/speed_scale_gpu_${CARD:-gpu}_pyro_overhead.json"
elif [[ " $STEPS " == *" overhead "* ]]; then
  exit 1  # a broken GPU path: stop, keep the device time
fi
step converge_subjects "${LIMIT_SUBJECTS:-200}" --parts converge --converge-sizes "$SUBJECTS" \
  && cp results/speed_converge$SUFFIX.json "$OUT/speed_scale_gpu_${CARD:-gpu}_converge_subjects.json"
step converge_app "${LIMIT_APP:-270}" --parts converge --converge-sizes --app-scale "$APP_SCALE" \
  && cp results/speed_converge$SUFFIX.json "$OUT/speed_scale_gpu_${CARD:-gpu}_converge_app.json"
step scaling "${LIMIT_SCALING:-120}" --parts scaling --sizes 8000 80000 "$SUBJECTS" \
  && cp results/speed_scaling$SUFFIX.json "$OUT/speed_scale_gpu_${CARD:-gpu}_scaling.json"
ls -la "$OUT"
