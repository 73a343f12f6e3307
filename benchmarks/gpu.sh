#!/usr/bin/env bash
# The GPU run of the benchmarks and of the main job, in one prepared script.
#
#   bash benchmarks/gpu.sh                 # on a machine with an NVIDIA GPU and CUDA 12/13 drivers
#   bash benchmarks/gpu.sh --check         # anywhere: the same steps on the CPU, small sizes
#                                          # (quick B3, thm3.1 on 2,000 instances), nothing
#                                          # installed (what the test suite runs)
#
# What it does, in order:
#   1. installs the CUDA build of jax (pip "jax[cuda12]", the version of the installed jax),
#      unless --check or --no-install;
#   2. checks that JAX sees a GPU (with --check: that it runs on the CPU);
#   3. python -m benchmarks (B1-B6 with the GPU targets: >= 1e8 C1 instances/s in float32,
#      the float32 unbiased MMD^2 at n = m = 4096 within 0.5 ms) into OUT/gpu-<date>.json;
#   4. python -m proofs_check (the default job) twice on one fresh compile cache, cold then
#      warm, into OUT/gpu-<date>-proofs_check-{cold,warm}.json, with their wall times in
#      OUT/gpu-<date>-proofs_check-times.json.
#
# OUT is benchmarks/results (default) or --out DIR. Exit code: 0 when every step ran (the
# targets' verdicts are in the reports), non-zero when a step failed.
set -euo pipefail
cd "$(dirname "$0")/.."

check=0
install=1
out=benchmarks/results
while [ $# -gt 0 ]; do
  case "$1" in
    --check) check=1; install=0 ;;
    --no-install) install=0 ;;
    --out) out="$2"; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "benchmarks/gpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$out"
python=${PYTHON:-python}
date=$(date +%Y-%m-%d)

if [ "$install" = 1 ]; then
  version=$("$python" -c "import jax; print(jax.__version__)")
  "$python" -m pip install --upgrade "jax[cuda12]==$version"
fi

if [ "$check" = 1 ]; then
  export JAX_PLATFORMS=cpu
  platform=cpu
  quick=(--quick --only B3)
  proofs_args=(--claims thm3.1 --instances 2000)
else
  platform=gpu
  quick=()
  proofs_args=()
fi
"$python" - "$platform" <<'EOF'
import sys
import jax
want = sys.argv[1]
got = jax.devices()[0].platform
if got != want:
  sys.exit(f"benchmarks/gpu.sh: expected a {want} device, JAX sees {jax.devices()}")
print(f"benchmarks/gpu.sh: {jax.device_count()} {got} device(s): {jax.devices()[0].device_kind}")
EOF

"$python" -m benchmarks "${quick[@]}" --out "$out"

cache=$(mktemp -d)
times="$out/$platform-$date-proofs_check-times.json"
echo "{" > "$times"
for state in cold warm; do
  start=$(date +%s.%N)
  status=0
  "$python" -m proofs_check "${proofs_args[@]}" --no-progress --compile-cache "$cache" \
    --json "$out/$platform-$date-proofs_check-$state.json" > /dev/null || status=$?
  end=$(date +%s.%N)
  [ "$status" -le 1 ] || { echo "benchmarks/gpu.sh: proofs_check exited $status" >&2; exit "$status"; }
  sep=$([ "$state" = cold ] && echo "," || echo "")
  echo "  \"$state\": {\"wall_s\": $(awk "BEGIN {print $end - $start}"), \"exit\": $status}$sep" >> "$times"
done
echo "}" >> "$times"
rm -rf "$cache"
echo "benchmarks/gpu.sh: done; reports in $out"
