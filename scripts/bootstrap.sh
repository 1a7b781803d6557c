# Sourced by scripts/demo and scripts/test: create or reuse .venv and install the project.
# Debian packages the tests and benchmarks use (qemu-img, cpulimit, socat; chromium and
# chromium-driver for the web manager's browser test; ping, iperf3, tcpdump, ip for the network
# tests) are installed when
# missing and we may (root or sudo); everything Python comes from PyPI into .venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# The interpreter: $PYTHON if set, else the first CPython >= 3.12 found (on PATH, or one pyenv
# has installed), else python3 (>= 3.11 works). 3.12's immortal objects (None, small ints,
# interned strings, static types) are never written by reference counting, so a forked worker
# or guest copies ~1.8 MiB fewer pages of its fork-server (issue 16, scripts/bench/density).
pick_python() {
  local c
  for c in python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 \
           python3.13 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3.13; do
    if "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then
      echo "$c"; return
    fi
  done
  echo python3
}
PY="${PYTHON:-$(pick_python)}"
need_apt=()
for pair in qemu-img:qemu-utils cpulimit:cpulimit socat:socat chromium:chromium \
            chromedriver:chromium-driver ping:iputils-ping iperf3:iperf3 tcpdump:tcpdump \
            ip:iproute2; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need_apt+=("${pair##*:}")
done
if [ "${#need_apt[@]}" -gt 0 ] && [ "${HVEMU_SKIP_APT:-0}" != 1 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  if command -v apt-get >/dev/null 2>&1; then
    echo "installing ${need_apt[*]} (Debian packages)" >&2
    $SUDO apt-get install -y -q "${need_apt[@]}" >/dev/null 2>&1 \
      || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q "${need_apt[@]}" >/dev/null 2>&1; } \
      || echo "warning: could not install ${need_apt[*]}; tests that need them are skipped" >&2
  fi
fi
want="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
have="$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)"
if [ -n "$have" ] && [ "$have" != "$want" ]; then
  echo "recreating .venv: it has Python $have, this machine offers $want" >&2
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
EXTRA="${1:-}"
stamp=".venv/.installed${EXTRA}"
if [ -z "$EXTRA" ] && [ -f ".venv/.installed[test]" ] && [ ! pyproject.toml -nt ".venv/.installed[test]" ]; then
  stamp=".venv/.installed[test]"   # installed with the test extra: hvemu itself is there too
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # a build's leftover metadata in the tree would shadow the installed entry points (the
  # checkout is on sys.path): drop it so the new ones (drivers, driver hosts) are seen
  rm -rf hvemu.egg-info
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${EXTRA}"
  touch "$stamp"
fi
# Byte-code caches for hvemu's own modules, as a regular (non-editable) install has them: with
# PYTHONDONTWRITEBYTECODE set (as here and in CI) an editable install never gets any, and every
# hvctl run and daemon start would compile its modules from source again (issue 16: about as
# much as hvctl's own work). Only stale ones are rewritten; __pycache__ is git-ignored.
.venv/bin/python -m compileall -q -j 0 hypervisor worker parent >/dev/null || true
