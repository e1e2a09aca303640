#!/usr/bin/env bash
# Build a wheel, install it (not editable) into a clean venv, and run a quick audit from it, outside the
# repository: catches files missing from the wheel (package data: the sample model and data, the report
# schema, the starter config of `robaudit init`).
#
# The venv reuses the system's torch (--system-site-packages) so no large download is needed; robaudit
# itself comes only from the wheel (pip install --force-reinstall --no-deps).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python -m pip wheel --no-deps --no-build-isolation -q -w "$work/dist" "$repo"
wheel="$(ls "$work"/dist/robaudit-*.whl)"
for member in robaudit/assets/lenet_fmnist.pt robaudit/assets/fmnist_test_sample.npz \
              robaudit/report/schema.json robaudit/examples/robaudit.yaml; do
  python -m zipfile -l "$wheel" | grep -q " *$member" || python - "$wheel" "$member" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
sys.exit(0 if sys.argv[2] in names else f"wheel misses {sys.argv[2]}")
PY
done

python -m venv --system-site-packages "$work/venv"
"$work/venv/bin/python" -m pip install -q --no-deps --force-reinstall "$wheel"
cd "$work"   # away from the checkout, so `import robaudit` can only find the installed wheel
"$work/venv/bin/python" - <<'PY'
import robaudit, sys
where = robaudit.__file__
assert "site-packages" in where, f"robaudit imported from {where}, not from the installed wheel"
print(f"robaudit {robaudit.__version__} from {where}")
PY
export OMP_WAIT_POLICY=PASSIVE
"$work/venv/bin/robaudit" init
"$work/venv/bin/robaudit" audit --profile quick -q -o report.json --html report.html --markdown summary.md \
  || { code=$?; [ "$code" -eq 1 ] || exit "$code"; }   # 1 = a gate threshold failed: the install works
"$work/venv/bin/robaudit" gate report.json --list-metrics > /dev/null
test -s report.html && test -s summary.md
echo "wheel check: ok"
