#!/usr/bin/env bash
# Install a Yikatong device (kiosk or cashier desk) on Debian 12 / Raspberry Pi OS (bookworm),
# amd64 or arm64: Debian packages, the `ykt` user, the folders, the first A/B slot (from a
# signed update bundle or a source checkout), configs, secrets, the claim bundle, the release
# key, the systemd units and polkit rule; then the device enrolls by itself and shows its
# pairing code. docs/operations.md ("Install and enroll a device") is the runbook;
# docs/updates.md describes the slot layout.
#
#   sudo scripts/install-device.sh --role kiosk --bundle DIR --pub release.pub \
#        --claim CLAIM_DIR [--central HOST] [--sam-pin FILE]
#   sudo scripts/install-device.sh --role cashier --from-source . [--wheelhouse DIR] ...
#
# Every step checks first and says "already done" when there is nothing to do: run it again
# at will. --dry-run prints every step and the commands it would run, and changes nothing.
# --root DIR installs into a folder (an image being prepared, or a test): the steps that need
# the running system (apt-get, starting services) are listed as not done, never skipped
# silently. YKT_INSTALL_ARCH / YKT_INSTALL_OS_RELEASE pretend another machine (tests).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"   # the checkout: config/, systemd/, docs/

usage() {
  cat <<'EOF'
usage: install-device.sh --role kiosk|cashier (--bundle DIR --pub FILE | --from-source DIR)
                         [--wheelhouse DIR] [--claim DIR] [--central HOST] [--sam-pin FILE]
                         [--pub FILE] [--root DIR] [--dry-run]

  --role ROLE        kiosk (patient self-service) or cashier (desk terminal)
  --bundle DIR       a signed update bundle (ykt fw bundle build/sign): the first slot
  --pub FILE         release public key(s), PEM; needed with --bundle, kept as
                     /etc/yikatong/release.pub for every later update
  --from-source DIR  a source checkout instead of a bundle (development, labs)
  --wheelhouse DIR   with --from-source: install offline from these wheels (pip --no-index)
  --claim DIR        the claim bundle from `ykt fw claim-bundle --out DIR`
                     (ca.pem, central-signing.pub, claim.password)
  --central HOST     central's host name (replaces central.hospital.lan in edge.toml)
  --sam-pin FILE     the terminal's PSAM PIN (kept as /etc/yikatong/secrets/sam.pin)
  --root DIR         install under DIR instead of / (an image, a test)
  --dry-run          print every step and what it would run; change nothing
EOF
}

die() { printf 'install-device: %s\n' "$1" >&2; exit "${2:-1}"; }

ROLE="" BUNDLE="" PUB="" SOURCE="" WHEELHOUSE="" CLAIM="" CENTRAL="" SAM_PIN="" ROOT="" DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --role) ROLE="${2:-}"; shift 2 ;;
    --bundle) BUNDLE="${2:-}"; shift 2 ;;
    --pub) PUB="${2:-}"; shift 2 ;;
    --from-source) SOURCE="${2:-}"; shift 2 ;;
    --wheelhouse) WHEELHOUSE="${2:-}"; shift 2 ;;
    --claim) CLAIM="${2:-}"; shift 2 ;;
    --central) CENTRAL="${2:-}"; shift 2 ;;
    --sam-pin) SAM_PIN="${2:-}"; shift 2 ;;
    --root) ROOT="${2:-}"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" 2 ;;
  esac
done

case "$ROLE" in kiosk|cashier) ;; *) usage >&2; die "--role kiosk|cashier is required" 2 ;; esac
if [ -n "$BUNDLE" ] && [ -n "$SOURCE" ]; then die "give --bundle or --from-source, not both" 2; fi
if [ -z "$BUNDLE" ] && [ -z "$SOURCE" ]; then die "give --bundle DIR or --from-source DIR" 2; fi
if [ -n "$BUNDLE" ] && [ -z "$PUB" ]; then
  die "--bundle needs --pub release.pub: a bundle is installed only once its signature checks" 2
fi
abspath() { (cd "$(dirname "$1")" && printf '%s/%s\n' "$(pwd)" "$(basename "$1")"); }
for var in BUNDLE SOURCE WHEELHOUSE CLAIM; do
  val="${!var}"
  if [ -n "$val" ]; then
    [ -d "$val" ] || die "$val: no such folder" 2
    printf -v "$var" '%s' "$(cd "$val" && pwd)"
  fi
done
for var in PUB SAM_PIN; do
  val="${!var}"
  if [ -n "$val" ]; then
    [ -f "$val" ] || die "$val: no such file" 2
    printf -v "$var" '%s' "$(abspath "$val")"
  fi
done
if [ -n "$CLAIM" ]; then
  for f in ca.pem central-signing.pub claim.password; do
    [ -f "$CLAIM/$f" ] || die "--claim $CLAIM has no $f (make it with: ykt fw claim-bundle --out DIR)" 2
  done
fi
if [ -n "$ROOT" ]; then
  [ -d "$ROOT" ] || die "--root $ROOT: no such folder" 2
  ROOT="$(cd "$ROOT" && pwd)"
  [ "$ROOT" != "/" ] || ROOT=""
fi
IS_ROOT=0; [ "$(id -u)" -eq 0 ] && IS_ROOT=1
if [ "$DRY" -eq 0 ] && [ -z "$ROOT" ] && [ "$IS_ROOT" -eq 0 ]; then
  die "run as root (sudo), or with --dry-run to see what it would do"
fi
CONF_SRC="$HERE"; [ -n "$SOURCE" ] && CONF_SRC="$SOURCE"   # configs of the same version

OPT=/opt/yikatong
SLOT="$OPT/slots/a"
TOTAL=14
N=0
NOT_DONE=()        # what a --root install leaves for the running system

# --------------------------------------------------------------------------- output helpers
step() { N=$((N + 1)); printf '[%2d/%d] %s\n' "$N" "$TOTAL" "$1"; }
say() { printf '        %s\n' "$*"; }
already() { say "already done: $*"; }
# Run a command (or, with --dry-run, print it). Arguments are shell-quoted when printed.
run() {
  local shown; shown="$(printf '%q ' "$@")"
  if [ "$DRY" -eq 1 ]; then say "would run: ${shown% }"; return 0; fi
  say "+ ${shown% }"
  "$@"
}
# Like run, but shown as a short description (for inline Python).
run_as() {
  local what="$1"; shift
  if [ "$DRY" -eq 1 ]; then say "would run: $what"; return 0; fi
  say "+ $what"
  "$@"
}
# A step that needs the running system as root (apt, systemctl start): done for real on a
# device, listed (never silently skipped) under --root or without root.
system_only() {
  local shown; shown="$(printf '%q ' "$@")"
  if [ -n "$ROOT" ] && [ "$DRY" -eq 1 ]; then
    say "would leave (--root: needs the running system): ${shown% }"; return 0
  fi
  if [ "$DRY" -eq 1 ]; then say "would run: ${shown% }"; return 0; fi
  if [ -n "$ROOT" ]; then
    say "not done (--root: needs the running system): ${shown% }"
    NOT_DONE+=("${shown% }"); return 0
  fi
  say "+ ${shown% }"
  "$@"
}
# Root-only on the target (chown, useradd): without root under --root, listed as not done.
as_root() {
  if [ "$IS_ROOT" -eq 0 ] && [ "$DRY" -eq 0 ]; then
    local shown; shown="$(printf '%q ' "$@")"
    say "not done (needs root): ${shown% }"; NOT_DONE+=("${shown% }"); return 0
  fi
  run "$@"
}
T() { printf '%s%s' "$ROOT" "$1"; }          # a device path inside the target root

# Users and groups of the target (its /etc files, so --root reads the image's, not ours).
has_user() { grep -q "^$1:" "$(T /etc/passwd)" 2>/dev/null; }
has_group() { grep -q "^$1:" "$(T /etc/group)" 2>/dev/null; }
in_group() { awk -F: -v g="$1" -v u="$2" '$1 == g { n = split($4, m, ","); for (i = 1; i <= n; i++) if (m[i] == u) f = 1 } END { exit !f }' "$(T /etc/group)"; }
uid_of() { awk -F: -v u="$1" '$1 == u { print $3 }' "$(T /etc/passwd)"; }
gid_of() { awk -F: -v g="$1" '$1 == g { print $3 }' "$(T /etc/group)"; }
PREFIX_OPT=(); [ -n "$ROOT" ] && PREFIX_OPT=(--prefix "$ROOT")
# owner spec for chown/install: numeric from the target's files (names may differ on the host)
owner() {
  local u="$1" g="$2"
  if [ "$u" = root ] && [ "$g" = root ]; then echo 0:0; return; fi
  local ui gi; ui="$([ "$u" = root ] && echo 0 || uid_of "$u")"; gi="$(gid_of "$g")"
  if [ -n "$ui" ] && [ -n "$gi" ]; then echo "$ui:$gi"; else echo "$u:$g"; fi
}
# Install one file (mode, owner) unless an identical one is there.
put_file() {
  local src="$1" dest="$2" mode="$3" own="$4"
  if [ -f "$(T "$dest")" ] && cmp -s "$src" "$(T "$dest")"; then
    already "$dest"; fix_meta "$dest" "$mode" "$own"; return 0
  fi
  run install -D -m "$mode" "$src" "$(T "$dest")"
  CHANGED=1
  fix_meta "$dest" "$mode" "$own"
}
CHANGED=0
fix_meta() {   # owner and mode of an existing target path
  local dest="$1" mode="$2" own="$3" spec; spec="$(owner "${own%%:*}" "${own##*:}")"
  [ "$DRY" -eq 1 ] && [ ! -e "$(T "$dest")" ] && { say "would run: chown $own $(T "$dest")"; return 0; }
  [ -e "$(T "$dest")" ] || return 0
  if [ "$(stat -c %u:%g "$(T "$dest")")" != "$spec" ]; then as_root chown -h "$spec" "$(T "$dest")"; fi
  if [ ! -L "$(T "$dest")" ] && [ "$(stat -c %a "$(T "$dest")")" != "${mode#0}" ]; then
    run chmod "$mode" "$(T "$dest")"
  fi
}

# --------------------------------------------------------------------------- 1. platform
step "Check the platform (Debian 12 / Raspberry Pi OS bookworm, amd64 or arm64)"
OS_RELEASE="${YKT_INSTALL_OS_RELEASE:-/etc/os-release}"
[ -r "$OS_RELEASE" ] || die "cannot read $OS_RELEASE: not a Debian system"
os_id="$(. "$OS_RELEASE"; echo "${ID:-}")"
os_ver="$(. "$OS_RELEASE"; echo "${VERSION_ID:-}")"
os_code="$(. "$OS_RELEASE"; echo "${VERSION_CODENAME:-}")"
os_name="$(. "$OS_RELEASE"; echo "${PRETTY_NAME:-$os_id $os_ver}")"
case "$os_id" in debian|raspbian) ;; *) os_id="" ;; esac
if [ -z "$os_id" ] || { [ "$os_ver" != 12 ] && [ "$os_code" != bookworm ]; }; then
  die "unsupported system: $os_name. This installer supports Debian 12 (bookworm) and Raspberry Pi OS bookworm only.
不支持的系统：$os_name。本安装程序仅支持 Debian 12（bookworm）和 Raspberry Pi OS bookworm。" 3
fi
ARCH="${YKT_INSTALL_ARCH:-$(dpkg --print-architecture)}"
case "$ARCH" in
  amd64) MACHINE=x86_64 ;;
  arm64) MACHINE=aarch64 ;;
  *) die "unsupported architecture: $ARCH. Yikatong devices run on amd64 or arm64 (64-bit Raspberry Pi OS).
不支持的架构：$ARCH。仅支持 amd64 或 arm64（64 位 Raspberry Pi OS）。" 3 ;;
esac
HOST_MACHINE="$(uname -m)"
if [ -n "$SOURCE" ] && [ "$MACHINE" != "$HOST_MACHINE" ] && [ "$DRY" -eq 0 ]; then
  die "--from-source builds for this machine ($HOST_MACHINE), not $ARCH: use a bundle built for $MACHINE" 3
fi
say "ok: $os_name, $ARCH ($MACHINE), role $ROLE$([ -n "$ROOT" ] && echo ", into $ROOT")"

# --------------------------------------------------------------------------- 2. packages
step "Debian packages"
PACKAGES=(pcscd libccid libpcsclite1 libusb-1.0-0 python3 python3-venv openssl ca-certificates
          curl polkitd fonts-noto-cjk chromium)
[ "$ROLE" = kiosk ] && PACKAGES+=(espeak-ng)                 # spoken prompts for patients
if [ -n "$SOURCE" ] && [ -z "$WHEELHOUSE" ]; then               # pyscard may build from source
  PACKAGES+=(python3-dev gcc libpcsclite-dev swig pkg-config)
fi
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query --admindir="$(T /var/lib/dpkg)" -W -f='${Status}' "$pkg" 2>/dev/null \
    | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -eq 0 ]; then
  already "${PACKAGES[*]}"
else
  system_only apt-get update -qq
  system_only env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}"
fi

# --------------------------------------------------------------------------- 3. users
step "Users: ykt (the daemons) and kiosk (the screen's session)"
if has_user ykt; then
  already "user ykt"
else
  has_group ykt || as_root groupadd "${PREFIX_OPT[@]}" --system ykt
  as_root useradd "${PREFIX_OPT[@]}" --system --gid ykt --home-dir /var/lib/yikatong \
    --no-create-home --shell /usr/sbin/nologin --comment "Yikatong device" ykt
fi
# Printers (lp), serial scanners (dialout), HID scanners (input), USB devices (plugdev).
for g in lp dialout input plugdev; do
  if ! has_group "$g"; then
    [ "$g" = plugdev ] && continue    # optional: not on every image
    say "group $g is missing on this system: $g devices will not be reachable"; continue
  fi
  if has_user ykt && in_group "$g" ykt; then already "ykt in $g"; continue; fi
  as_root usermod "${PREFIX_OPT[@]}" --append --groups "$g" ykt
done
if has_user kiosk; then
  already "user kiosk"
else
  as_root useradd "${PREFIX_OPT[@]}" --create-home --user-group --shell /bin/bash \
    --comment "Yikatong screen" kiosk
fi
for g in video render input audio; do
  has_group "$g" || continue
  if has_user kiosk && in_group "$g" kiosk; then already "kiosk in $g"; continue; fi
  as_root usermod "${PREFIX_OPT[@]}" --append --groups "$g" kiosk
done

# --------------------------------------------------------------------------- 4. folders
step "Folders"
# path mode owner:group — the slot root belongs to ykt (updates install there); /etc is
# read by ykt, written by root; /var/lib/yikatong/edge is the daemon's StateDirectory.
DIRS=("$OPT 0755 ykt:ykt" "$OPT/slots 0755 ykt:ykt" "$OPT/update 0750 ykt:ykt"
      "$OPT/update/downloads 0750 ykt:ykt" "/etc/yikatong 0750 root:ykt"
      "/etc/yikatong/secrets 0750 root:ykt" "/etc/yikatong/claim 0750 root:ykt"
      "/var/lib/yikatong 0755 root:root" "/var/lib/yikatong/edge 0700 ykt:ykt")
for entry in "${DIRS[@]}"; do
  read -r path mode own <<<"$entry"
  spec="$(owner "${own%%:*}" "${own##*:}")"
  if [ -d "$(T "$path")" ] && [ "$(stat -c %a "$(T "$path")")" = "${mode#0}" ] \
      && [ "$(stat -c %u:%g "$(T "$path")")" = "$spec" ]; then
    already "$path"
  elif [ -d "$(T "$path")" ]; then
    fix_meta "$path" "$mode" "$own"
  else
    run install -d -m "$mode" "$(T "$path")"
    fix_meta "$path" "$mode" "$own"
  fi
done

# --------------------------------------------------------------------------- 5. slot a
# Check a bundle with the base system's tools (openssl, python3's stdlib) before anything in
# it is installed or run: the signature over manifest.json with a key of --pub, then every
# listed file's size and SHA-256, nothing more and nothing less, the architecture and Python.
# After the install, the bundle's own yikatong.bundle.verify_bundle checks it again in full.
precheck_bundle() {
  local tmp; tmp="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN
  python3 - "$BUNDLE" "$PUB" "$tmp" sig <<'PY' || return 1
import base64, json, re, sys
bundle, pub, tmp = sys.argv[1:4]
rec = json.loads(open(f"{bundle}/manifest.sig", "rb").read())
if rec.get("alg") != "Ed25519" or not re.fullmatch(r"[A-Za-z0-9_-]{86}", str(rec.get("sig"))):
    sys.exit("manifest.sig is not an Ed25519 signature record")
open(f"{tmp}/sig.bin", "wb").write(base64.urlsafe_b64decode(rec["sig"] + "=="))
blocks = re.findall(rb"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----",
                    open(pub, "rb").read(), re.S)
if not blocks:
    sys.exit(f"{pub} holds no PEM public key")
for i, b in enumerate(blocks):
    open(f"{tmp}/key{i}.pem", "wb").write(b + b"\n")
PY
  local ok=0 key
  for key in "$tmp"/key*.pem; do
    if openssl pkeyutl -verify -pubin -inkey "$key" -rawin -in "$BUNDLE/manifest.json" \
        -sigfile "$tmp/sig.bin" >/dev/null 2>&1; then ok=1; break; fi
  done
  if [ "$ok" -eq 0 ]; then
    say "REFUSED: the signature of manifest.json does not verify with any key of $PUB" >&2
    say "拒绝：manifest.json 的签名无法用 $PUB 中的任何公钥验证" >&2
    return 1
  fi
  python3 - "$BUNDLE" "$MACHINE" <<'PY' || return 1
import hashlib, json, os, stat, sys
bundle, machine = sys.argv[1:3]
m = json.loads(open(f"{bundle}/manifest.json", "rb").read())
listed = {f["path"]: f for f in m["files"]}
present = set()
for d, dirs, files in os.walk(bundle):
    for name in dirs + files:
        p = os.path.join(d, name)
        rel = os.path.relpath(p, bundle)
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            sys.exit(f"{rel} is a symlink")
        if stat.S_ISREG(st.st_mode):
            present.add(rel)
extra = present - set(listed) - {"manifest.json", "manifest.sig"}
missing = set(listed) - present
if extra or missing:
    sys.exit(f"files not as listed: missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}")
for rel, f in listed.items():
    h = hashlib.sha256()
    with open(os.path.join(bundle, rel), "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    if os.path.getsize(os.path.join(bundle, rel)) != f["size"] or h.hexdigest() != f["sha256"]:
        sys.exit(f"{rel}: size or SHA-256 differs from the manifest (the file was changed)")
if machine not in m["architectures"]:
    sys.exit(f"the bundle is for {', '.join(m['architectures'])}, not {machine}")
py = "%d.%d" % sys.version_info[:2]
if m["python"] != py:
    sys.exit(f"the bundle is for Python {m['python']}, this system has {py}")
print(m["version"])
PY
}

write_marker() {   # the last install step: slots/a/.slot.json, fsynced (docs/updates.md)
  run_as "write $SLOT/.slot.json {version: $1, manifest_sha256: $2}, fsynced" \
    python3 - "$(T "$SLOT")" "$1" "$2" <<'PY'
import json, os, sys
from datetime import UTC, datetime
slot, version, sha = sys.argv[1:4]
tmp, path = f"{slot}/..slot.json.tmp", f"{slot}/.slot.json"
with open(tmp, "w", encoding="utf-8") as f:
    json.dump({"version": version, "manifest_sha256": sha,
               "installed_at": datetime.now(UTC).isoformat()}, f, sort_keys=True, indent=1)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())
os.replace(tmp, path)
fd = os.open(slot, os.O_RDONLY | os.O_DIRECTORY)
os.fsync(fd)
os.close(fd)
PY
}

# Under --root the venv was made at ROOT/opt/…; on the device it runs at /opt/…: point the
# scripts' #! lines and pyvenv.cfg at the device path.
relocate_slot() {
  [ -n "$ROOT" ] || return 0
  local f
  if [ "$DRY" -eq 1 ]; then say "would run: rewrite #!$(T "$SLOT")/bin/python → #!$SLOT/bin/python"; return 0; fi
  say "+ rewrite #!$(T "$SLOT")/bin/python → #!$SLOT/bin/python in $(T "$SLOT")/bin"
  for f in "$(T "$SLOT")"/bin/* "$(T "$SLOT")/pyvenv.cfg"; do
    [ -f "$f" ] && [ ! -L "$f" ] || continue
    if grep -qF "$(T "$SLOT")" "$f"; then sed -i "s#$(T "$SLOT")#$SLOT#g" "$f"; fi
  done
}

step "First slot: $([ -n "$BUNDLE" ] && echo "bundle $BUNDLE" || echo "source $SOURCE") into $SLOT"
marker="$(T "$SLOT")/.slot.json"
if [ -f "$marker" ] && [ -x "$(T "$SLOT")/bin/ykt" ]; then
  have="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$marker")"
  already "slot a holds version $have (a newer version goes in with ykt update install / a rollout)"
else
  if [ -e "$(T "$SLOT")" ]; then   # no marker: an install cut short; start again
    run rm -rf "$(T "$SLOT")"
  fi
  if [ -n "$BUNDLE" ]; then
    if [ "$DRY" -eq 1 ]; then
      say "would run: check manifest.sig with openssl and $PUB, then every file's SHA-256"
    else
      say "+ check manifest.sig with openssl and $PUB, then every file's SHA-256, arch, Python"
      version="$(precheck_bundle)" || die "the bundle $BUNDLE is refused; nothing was installed
更新包 $BUNDLE 被拒绝；未安装任何内容" 4
      say "  signature and $(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["files"]))' "$BUNDLE/manifest.json") files ok: version $version"
    fi
    run python3 -m venv "$(T "$SLOT")"
    run "$(T "$SLOT")/bin/python" -I -m pip install -q --no-index --no-cache-dir \
      --disable-pip-version-check --find-links "$BUNDLE/wheels" yikatong
    # The full check, by the code just installed from the checked wheels.
    run_as "verify the bundle again with the installed yikatong.bundle.verify_bundle" \
      "$(T "$SLOT")/bin/python" -I -c 'import sys
from yikatong.bundle import load_release_keys, verify_bundle
m = verify_bundle(sys.argv[1], load_release_keys(sys.argv[2]), arch=sys.argv[3])
print("        verified:", m.version, ", ".join(m.architectures))' "$BUNDLE" "$PUB" "$MACHINE"
    sha="$([ "$DRY" -eq 1 ] || sha256sum "$BUNDLE/manifest.json" | cut -d' ' -f1)"
  else
    run python3 -m venv "$(T "$SLOT")"
    pip_opts=(-q --no-cache-dir --disable-pip-version-check)
    [ -n "$WHEELHOUSE" ] && pip_opts+=(--no-index --find-links "$WHEELHOUSE")
    [ -f "$SOURCE/config/device-constraints.txt" ] && \
      pip_opts+=(--constraint "$SOURCE/config/device-constraints.txt")
    run "$(T "$SLOT")/bin/python" -I -m pip install "${pip_opts[@]}" "$SOURCE"
    version=""
    sha="source"   # no manifest: installed from a checkout
  fi
  relocate_slot
  if [ "$DRY" -eq 1 ]; then
    say "would run: write $SLOT/.slot.json (version, manifest_sha256, installed_at), fsynced"
  else
    installed="$("$(T "$SLOT")/bin/python" -I -c 'from yikatong.version import installed_version; print(installed_version())')"
    if [ -n "$BUNDLE" ] && [ "$installed" != "$version" ]; then
      die "slot a runs version $installed, the bundle says $version: not marked usable" 4
    fi
    write_marker "$installed" "$sha"
  fi
fi
if [ -d "$(T "$SLOT")" ] && [ "$(stat -c %u:%g "$(T "$SLOT")")" != "$(owner ykt ykt)" ]; then
  as_root chown -R "$(owner ykt ykt)" "$(T "$SLOT")"
fi

# --------------------------------------------------------------------------- 6. symlinks
step "Symlinks current and committed → slots/a"
for link in current committed; do
  target="$(readlink "$(T "$OPT/$link")" 2>/dev/null || true)"
  case "$target" in
    slots/a|slots/b|"$OPT/slots/a"|"$OPT/slots/b")
      already "$link -> $target" ;;
    *)
      # atomically: a new link under a temporary name, then rename it over (docs/updates.md)
      run ln -sfn slots/a "$(T "$OPT/.$link.tmp")"
      run mv -Tf "$(T "$OPT/.$link.tmp")" "$(T "$OPT/$link")"
      run sync "$(T "$OPT")"
      as_root chown -h "$(owner ykt ykt)" "$(T "$OPT/$link")" ;;
  esac
done

# --------------------------------------------------------------------------- 7. release key
step "Release key /etc/yikatong/release.pub (updates are installed only if signed by it)"
if [ -n "$PUB" ]; then
  put_file "$PUB" /etc/yikatong/release.pub 0644 root:root
elif [ -f "$(T /etc/yikatong/release.pub)" ]; then
  already "/etc/yikatong/release.pub"
else
  say "NOT SET: without /etc/yikatong/release.pub this device refuses every update bundle;"
  say "run again with --pub release.pub"
fi

# --------------------------------------------------------------------------- 8. configs
step "Configs /etc/yikatong/edge.toml and kiosk.toml (role $ROLE)"
ui_src="$CONF_SRC/config/kiosk.toml"; [ "$ROLE" = cashier ] && ui_src="$CONF_SRC/config/cashier-ui.toml"
for pair in "$CONF_SRC/config/edge-$ROLE.toml:/etc/yikatong/edge.toml" "$ui_src:/etc/yikatong/kiosk.toml"; do
  src="${pair%%:*}" dest="${pair##*:}"
  [ -f "$src" ] || die "$src is missing"
  if [ -f "$(T "$dest")" ]; then
    already "$dest (kept as it is: local changes are never overwritten)"
    continue
  fi
  if [ "$DRY" -eq 1 ]; then
    say "would run: install -D -m 0640 $src $(T "$dest")$([ -n "$CENTRAL" ] && echo " (central host: $CENTRAL)")"
    fix_meta "$dest" 0640 root:ykt
    continue
  fi
  tmpconf="$(mktemp)"
  if [ -n "$CENTRAL" ]; then
    sed "s/\"central\\.hospital\\.lan\"/\"$CENTRAL\"/" "$src" >"$tmpconf"
  else
    cp "$src" "$tmpconf"
  fi
  run install -D -m 0640 "$tmpconf" "$(T "$dest")"
  rm -f "$tmpconf"
  fix_meta "$dest" 0640 root:ykt
done
if [ -z "$CENTRAL" ] && grep -q 'central\.hospital\.lan' "$(T /etc/yikatong/edge.toml)" 2>/dev/null; then
  say "edge.toml still names central.hospital.lan: give --central HOST or edit [uplink]/[enrollment] host"
fi
if [ "$DRY" -eq 1 ]; then
  say "would run: load both configs with the slot's EdgeConfig and KioskConfig"
else
  run_as "load both configs with the slot's EdgeConfig and KioskConfig" \
    "$(T "$SLOT")/bin/python" -I -c 'import sys
from edge.config import EdgeConfig
from kiosk.config import KioskConfig
from yikatong.common.config import load_config
load_config(sys.argv[1], EdgeConfig)
load_config(sys.argv[2], KioskConfig)
print("        both configs load")' "$(T /etc/yikatong/edge.toml)" "$(T /etc/yikatong/kiosk.toml)"
fi

# --------------------------------------------------------------------------- 9. secrets
step "Secrets: the local API token, the PSAM PIN"
token="/etc/yikatong/secrets/edge-api.token"
if [ -s "$(T "$token")" ]; then
  already "$token"
else
  if [ "$DRY" -eq 1 ]; then
    say "would run: write 32 random bytes (base64url) to $token"
  else
    say "+ write 32 random bytes (base64url) to $token"
    (umask 077; python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$(T "$token")")
  fi
fi
fix_meta "$token" 0640 root:ykt
if [ -n "$SAM_PIN" ]; then
  put_file "$SAM_PIN" /etc/yikatong/secrets/sam.pin 0640 root:ykt
elif [ -s "$(T /etc/yikatong/secrets/sam.pin)" ]; then
  already "/etc/yikatong/secrets/sam.pin"
else
  say "NOT SET: /etc/yikatong/secrets/sam.pin (the PSAM PIN, from the card issuer): without it"
  say "health cards cannot be read; run again with --sam-pin FILE"
fi

# --------------------------------------------------------------------------- 10. claim
step "Claim bundle /etc/yikatong/claim (how the device asks central for its identity)"
if [ -n "$CLAIM" ]; then
  put_file "$CLAIM/ca.pem" /etc/yikatong/claim/ca.pem 0644 root:root
  put_file "$CLAIM/central-signing.pub" /etc/yikatong/claim/central-signing.pub 0644 root:root
  put_file "$CLAIM/claim.password" /etc/yikatong/claim/claim.password 0640 root:ykt
elif [ -s "$(T /etc/yikatong/claim/claim.password)" ]; then
  already "/etc/yikatong/claim"
else
  say "NOT SET: the device cannot enroll without it; an administrator makes it with"
  say "ykt fw claim-bundle --out DIR; run again with --claim DIR"
fi

# --------------------------------------------------------------------------- 11. units
step "systemd units, polkit rule, runbook"
CHANGED=0
put_file "$HERE/systemd/ykt-edge.service" /etc/systemd/system/ykt-edge.service 0644 root:root
put_file "$HERE/systemd/ykt-kiosk.service" /etc/systemd/system/ykt-kiosk.service 0644 root:root
put_file "$HERE/systemd/ykt-kiosk-browser.service" /etc/systemd/system/ykt-kiosk-browser.service \
  0644 root:root
put_file "$HERE/systemd/50-yikatong.rules" /etc/polkit-1/rules.d/50-yikatong.rules 0644 root:root
UNITS_CHANGED="$CHANGED"
put_file "$HERE/docs/operations.md" /usr/share/doc/yikatong/operations.md 0644 root:root

# --------------------------------------------------------------------------- 12. screen
step "The screen: user kiosk logged in automatically on display :0"
if [ -d "$(T /etc/lightdm)" ]; then
  conf="$(mktemp)"
  printf '# Yikatong (scripts/install-device.sh): the screen shows the UI as user kiosk.\n[Seat:*]\nautologin-user=kiosk\nautologin-user-timeout=0\n' >"$conf"
  put_file "$conf" /etc/lightdm/lightdm.conf.d/50-yikatong.conf 0644 root:root
  rm -f "$conf"
else
  say "no lightdm on this system: set up a graphical session that logs in user kiosk on :0"
  say "(Raspberry Pi OS: raspi-config → System Options → Boot / Auto Login)"
fi

# --------------------------------------------------------------------------- 13. services
step "Enable and start pcscd, ykt-edge, ykt-kiosk, ykt-kiosk-browser"
UNITS=(pcscd.socket ykt-edge.service ykt-kiosk.service ykt-kiosk-browser.service)
if [ -n "$ROOT" ]; then
  # Offline: systemctl --root makes the [Install] links in the image, nothing runs.
  to_enable=()
  for u in "${UNITS[@]}"; do
    ours=0; [ "$DRY" -eq 1 ] && [ -f "$HERE/systemd/$u" ] && ours=1   # step 11 installs it
    if [ "$ours" -eq 0 ] && [ ! -f "$(T "/etc/systemd/system/$u")" ] \
        && [ ! -f "$(T "/usr/lib/systemd/system/$u")" ] && [ ! -f "$(T "/lib/systemd/system/$u")" ]; then
      say "$u is not in $ROOT (its package is not installed there): not enabled"
      NOT_DONE+=("systemctl enable $u"); continue
    fi
    if systemctl --root="$ROOT" is-enabled --quiet "$u" 2>/dev/null; then already "$u enabled"
    else to_enable+=("$u"); fi
  done
  [ "${#to_enable[@]}" -eq 0 ] || run systemctl --root="$ROOT" enable --quiet "${to_enable[@]}"
  system_only systemctl daemon-reload
  system_only systemctl start "${UNITS[@]}"
else
  run systemctl daemon-reload
  pending=()
  for u in "${UNITS[@]}"; do
    if systemctl is-enabled --quiet "$u" && systemctl is-active --quiet "$u"; then
      already "$u enabled and running"
    else pending+=("$u"); fi
  done
  [ "${#pending[@]}" -eq 0 ] || run systemctl enable --now "${pending[@]}"
  if [ "$UNITS_CHANGED" -eq 1 ] && [ "${#pending[@]}" -lt "${#UNITS[@]}" ]; then
    # new unit files for services that were running: restart them onto the new settings
    run systemctl try-restart ykt-edge.service ykt-kiosk-browser.service
  fi
fi

# --------------------------------------------------------------------------- 14. enrollment
step "Enrollment"
ident="/var/lib/yikatong/edge/identity/identity.json"
if [ -f "$(T "$ident")" ]; then
  already "enrolled: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d.get("id") or d.get("device_id"), d.get("role"), d.get("site"))' "$(T "$ident")" 2>/dev/null || echo "$ident")"
else
  code=""
  if [ "$DRY" -eq 0 ] && [ -z "$ROOT" ] && [ -s "$token" ]; then
    port="$(sed -n '/^\[api\]/,/^\[/s/^port *= *\([0-9]*\).*/\1/p' /etc/yikatong/edge.toml | head -1)"
    for _ in $(seq 1 30); do
      code="$(curl -fs -H "Authorization: Bearer $(cat "$token")" \
        "http://127.0.0.1:${port:-8701}/v1/enrollment" 2>/dev/null \
        | python3 -c 'import json,sys; print(json.load(sys.stdin).get("code") or "")' 2>/dev/null || true)"
      [ -n "$code" ] && break
      sleep 1
    done
  fi
  if [ -n "$code" ]; then say "pairing code: $code  (配对码)"; fi
  say "The device now asks central for its identity. Its pairing code appears on the screen"
  say "(and is printed once on the receipt printer). A technician approves it at central:"
  say "  ykt fw enroll list"
  say "  ykt fw enroll approve CODE --name ${ROLE}-003 --role $ROLE --site SITE"
  say "Follow it here: journalctl -u ykt-edge -f   (docs/operations.md)"
fi

if [ "${#NOT_DONE[@]}" -gt 0 ]; then
  echo "Not done here (needs the running system or root; do it on the device):"
  for c in "${NOT_DONE[@]}"; do echo "  - $c"; done
fi
if [ "$DRY" -eq 1 ]; then echo "dry run: nothing was changed"; else echo "install complete"; fi
