#!/usr/bin/env bash
# Install everything Yikatong needs on Debian 12 (bookworm): the Debian packages of the real
# stacks (pcscd + vpcd, Mosquitto, socat, Chromium, CJK fonts, the pyscard build chain) and
# the Python dependencies into ./.venv. Idempotent and fast on a second run: it installs only
# what is missing and reinstalls Python packages only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

DEB_PACKAGES=(
  pcscd vsmartcard-vpcd libpcsclite-dev swig       # PC/SC daemon, virtual reader, pyscard build
  mosquitto mosquitto-clients                      # the real MQTT broker central supervises
  socat                                            # pseudo-terminals for serial scanner tests
  chromium fonts-noto-cjk                          # kiosk browser, Chinese glyphs for UI and receipts
  espeak-ng                                        # optional spoken prompts at the kiosk
  python3 python3-venv python3-dev gcc make pkg-config util-linux
  systemd openssl                                  # systemd-analyze verify; install-device.sh's bundle check
  postgresql                                       # central's multi-instance store; tests run their own server
)

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The distribution's own pcscd/mosquitto services are not ours: Yikatong starts its own
# instances (private pcscd namespace, generated Mosquitto config) and must not race them.
for svc in mosquitto pcscd pcscd.socket postgresql; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
done

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "Python >= 3.11 is required (found $("$PY" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.yikatong-installed
# Runtime dependencies at the exact versions update bundles ship (config/device-constraints.txt,
# docs/updates.md "Bundles"): what the tests run against is what devices get.
want="$(cat pyproject.toml config/device-constraints.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "==> installing Python dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test,postgres]' -c config/device-constraints.txt
  echo "$want" > "$stamp"
fi
# The offline wheelhouse: wheels of those pinned runtime dependencies plus the build backend,
# so `ykt fw bundle build --offline --wheelhouse .venv/wheelhouse` (and the bundle tests) need
# no network. Network is allowed here, at install time, never in tests.
wh=.venv/wheelhouse
if [ ! -f "$wh/.stamp" ] || [ "$(cat "$wh/.stamp")" != "$want" ]; then
  echo "==> building the offline wheelhouse $wh"
  rm -rf "$wh.tmp" && mkdir -p "$wh.tmp"
  .venv/bin/python -m pip wheel -q --no-deps -r config/device-constraints.txt -w "$wh.tmp"
  .venv/bin/python -m pip wheel -q 'setuptools>=77' wheel -w "$wh.tmp"
  rm -rf "$wh" && mv "$wh.tmp" "$wh" && echo "$want" > "$wh/.stamp"
fi
echo "==> install complete"
