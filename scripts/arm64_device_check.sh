#!/usr/bin/env bash
# arm64_device_check.sh: prove the device install works on the camera's architecture (Raspberry Pi OS Bookworm,
# arm64, Python 3.11), under qemu-user emulation on an x86 Debian/Ubuntu host, as root. Two checks (CHECK=...):
#
# install (CHECK=install): the Pi's own install path, with apt's camera stack. A complete Bookworm arm64 root
#   (debootstrap, second stage in a chroot through binfmt_misc) gets python3-numpy and python3-scipy (a Debian C
#   extension built against that numpy: the stand-in for picamera2's simplejpeg) from apt; then systemd/install.sh
#   runs live in that chroot (its apt step, venv, constraints and pip, all arm64 programs under qemu). Per Pi core:
#   the venv must import apt's numpy (not a pip copy), import and run apt's scipy, embed real images with the
#   shipped model, fit a detector with edge_agent.learn.fitting and score a good and a broken bottle. It also shows
#   what the constraint prevents: pip's plan for the same install without it, and apt's scipy failing under it.
# interpreters (CHECK=interpreters): the TFLite interpreter matrix. A first-stage-only root (no binfmt needed)
#   with Python unpacked from .debs; per interpreter spec, aarch64 wheels installed on the host with pip --target
#   (numpy, opencv-python-headless, paho-mqtt: pip's newest, i.e. not Raspberry Pi OS's numpy); each embeds one
#   real image under qemu-aarch64-static -L ROOT on several CPU models and is compared with x86 level by level:
#   1. apt-get installs debootstrap and qemu-user-static on the host if they are missing (needs root).
#   2. Builds an arm64 Debian Bookworm root (debootstrap --foreign, first stage only, no chroot) and unpacks
#      Python 3.11 into it with dpkg-deb (.debs fetched by a private arm64 apt setup under build/: the host's
#      apt configuration is left alone), plus an arm64 /proc/cpuinfo per CPU model (see PROC_CPUINFO).
#   3. For each interpreter spec, installs the device dependencies from aarch64 wheels into its own --target dir
#      (numpy, opencv-python-headless, paho-mqtt + the interpreter, resolved together as on a device).
#   4. Runs, under qemu-aarch64-static -L ROOT (no binfmt registration), a snippet that loads the shipped model
#      with edge_agent.embed.features.FeatureExtractor and embeds one real image; runs the same snippet on the host
#      (venv reference, and the same versions installed for x86) and compares the features level by level.
#   5. Prints a table: spec x CPU model -> pass / CRASH (SIGSEGV = rc 139) / TIMEOUT / MISMATCH, with wall times.
# Everything lands under build/ (gitignored) and is reused by the next run.
#
# Exit status: 0 when every check run passed; 1 when the install check failed (numpy not apt's, scipy, embed, fit
# or score failing on a core) or the FIRST interpreter spec (the project's aarch64 pin) did not pass on every
# REQUIRED_CPUS model; 2 on a setup error. Results: build/arm64-check/{install-results.md,results.md,logs/}.
# See docs/arm64.md.
#
# Usage: scripts/arm64_device_check.sh [SPEC ...]
#   SPEC: a pip requirement for the interpreter; extra requirements for the same target dir may be joined
#         with '&' (e.g. 'tflite-runtime==2.14.0&numpy<2'). tflite-runtime specs get numpy<2 automatically.
# Environment (defaults in brackets):
#   CHECK          install | interpreters | all   [all]
#   -- install check --
#   DEVICE_ROOT    the complete arm64 root        [build/arm64-device]
#   INSTALL_CPUS   qemu -cpu models the installed agent is run on [cortex-a76 cortex-a72 cortex-a53]
#   DEBIAN_EXT     apt's C extension to import: python3-<it> (scipy; opencv = module cv2, big) [scipy]
#   N_FIT          good images to fit on (mvtec_ad_bottle/train/good, the first N) [6]
#   FIT_FACTOR     augmented copies per good image [2]
#   DEVICE_EXTRA   pip requirement(s) installed into the venv after install.sh, with its constraints (to try
#                  an interpreter the pin does not select, e.g. 'ai-edge-litert==2.3.0') [none]
#   INSTALL_TIMEOUT seconds per emulated command (apt, install.sh, one fit) [1800]
#   -- interpreter check --
#   LITERT_SPECS   specs when none are given as arguments [see DEFAULT_SPECS below; first = project pin]
#   LITERT_SPEC    shorthand: check only this one spec
#   ARM64_ROOT     the arm64 root                 [build/arm64-root]
#   QEMU_CPUS      qemu -cpu models to run each spec on [cortex-a76 cortex-a72 cortex-a53 max]
#                  cortex-a76 = Pi 5, cortex-a72 = Pi 4 / 400 / CM4, cortex-a53 = Pi 3 / Zero 2 W;
#                  max = every feature QEMU emulates (SVE, SME, ...), which no Pi has: informational only
#   REQUIRED_CPUS  CPUs on which the pin must pass [cortex-a76 cortex-a72 cortex-a53]
#   EMU_TIMEOUT    seconds per emulated run       [300]
#   MIN_COSINE     per-level cosine vs x86 needed to pass [0.995]
#   -- both --
#   ARM64_WORK     caches, site dirs, logs        [build/arm64-check]
#   EDGE_DATA_DIR  real images                    [../shared/data]; image = mvtec_ad_bottle/test/good/000.png
#   MODEL_DIR      model folder (interpreter check; the install check uses the installed package's) [models/efficientnet-lite0-int8]
#   PROC_CPUINFO   emulated: each run sees an arm64 /proc/cpuinfo matching its -cpu model (as on a Pi) [default]
#                  host: the guest reads the x86 host's /proc/cpuinfo (what plain qemu-user does). The cpuinfo
#                  library inside XNNPACK/ruy of ai-edge-litert >= 2.2 segfaults on that: an emulation artifact.
#   DEBIAN_MIRROR  [http://deb.debian.org/debian]
#   HOST_PYTHON    host python with the device deps, for the x86 reference [.venv/bin/python]
#   REFRESH=1      re-resolve wheels and re-fetch debs even where a stamp says they are done
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

DEFAULT_SPECS=(
  "ai-edge-litert>=1.4,<2.4"      # the project's aarch64 pin (pyproject.toml); resolves to 2.3.0
  "ai-edge-litert==2.1.*"         # the pin before 2026-11-30
  "ai-edge-litert==1.4.0"
  "ai-edge-litert==2.0.*"
  "ai-edge-litert==2.2.0"
  "ai-edge-litert==2.3.0"
  "tflite-runtime==2.14.0"        # + numpy<2 (added automatically)
)
if [[ $# -gt 0 ]]; then
  SPECS=("$@")
elif [[ -n "${LITERT_SPEC:-}" ]]; then
  SPECS=("$LITERT_SPEC")
elif [[ -n "${LITERT_SPECS:-}" ]]; then
  read -r -a SPECS <<<"$LITERT_SPECS"
else
  SPECS=("${DEFAULT_SPECS[@]}")
fi

ROOT=$(realpath -m "${ARM64_ROOT:-build/arm64-root}")
WORK=$(realpath -m "${ARM64_WORK:-build/arm64-check}")
DATA_DIR=${EDGE_DATA_DIR:-$REPO/../shared/data}
IMAGE=${IMAGE:-$DATA_DIR/mvtec_ad_bottle/test/good/000.png}
MODEL_DIR=$(realpath -m "${MODEL_DIR:-models/efficientnet-lite0-int8}")
read -r -a CPUS <<<"${QEMU_CPUS:-${QEMU_CPU:-cortex-a76 cortex-a72 cortex-a53 max}}"
read -r -a REQUIRED_CPUS <<<"${REQUIRED_CPUS:-cortex-a76 cortex-a72 cortex-a53}"
EMU_TIMEOUT=${EMU_TIMEOUT:-300}
MIN_COSINE=${MIN_COSINE:-0.995}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
HOST_PYTHON=${HOST_PYTHON:-$REPO/.venv/bin/python}
REFRESH=${REFRESH:-0}
PROC_CPUINFO=${PROC_CPUINFO:-emulated}
CHECK=${CHECK:-all}
[[ $CHECK == install || $CHECK == interpreters || $CHECK == all ]] || { echo "CHECK=$CHECK: use install, interpreters or all" >&2; exit 2; }
DEV_ROOT=$(realpath -m "${DEVICE_ROOT:-build/arm64-device}")
read -r -a INSTALL_CPUS <<<"${INSTALL_CPUS:-cortex-a76 cortex-a72 cortex-a53}"
DEBIAN_EXT=${DEBIAN_EXT:-scipy}
N_FIT=${N_FIT:-6}
FIT_FACTOR=${FIT_FACTOR:-2}
DEVICE_EXTRA=${DEVICE_EXTRA:-}
INSTALL_TIMEOUT=${INSTALL_TIMEOUT:-1800}
[[ -x "$HOST_PYTHON" ]] || HOST_PYTHON=$(command -v python3)

# Python 3.11 from Bookworm plus the shared libraries its stdlib extensions and the wheels need beyond what
# debootstrap's first stage already unpacks (libc6, libstdc++6, libgcc-s1, zlib1g, libffi8, libbz2, liblzma).
# libexpat1: the python3.11 binary itself links it; libssl3: _ssl/_hashlib (paho-mqtt imports ssl). Found by running:
# nothing else is needed (_decimal bundles libmpdec in Bookworm; sqlite3, curses, dbm, readline are never imported).
PY_DEBS=${PY_DEBS:-"python3.11-minimal libpython3.11-minimal libpython3.11-stdlib python3.11 libexpat1 libssl3"}
# Bookworm has glibc 2.36, so a Pi accepts every manylinux tag up to 2_36 (tflite-runtime 2.14 is manylinux_2_34 only).
PLATFORM_ARGS=(--python-version 3.11 --implementation cp --only-binary=:all:)
for tag in manylinux2014 manylinux_2_17 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34 manylinux_2_35 \
           manylinux_2_36; do
  PLATFORM_ARGS+=(--platform "${tag}_aarch64")
done
DEVICE_REQS=("numpy>=1.24" "opencv-python-headless>=4.8" "paho-mqtt>=2.0")   # as pyproject.toml says

write_cpuinfo() {  # write_cpuinfo CPU FILE: a /proc/cpuinfo the way a Linux arm64 kernel writes it on that core
  local cpu=$1 file=$2 impl=0x41 var=0x0 part rev=0 feats="fp asimd evtstrm crc32 cpuid" n i
  case ${cpu%%,*} in
    cortex-a76) var=0x4; part=0xd0b; rev=1     # Raspberry Pi 5 (BCM2712, r4p1)
                feats="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp";;
    cortex-a72) part=0xd08; rev=3;;             # Raspberry Pi 4 / 400 / CM4 (BCM2711, r0p3, no crypto)
    cortex-a53) part=0xd03; rev=4;;             # Raspberry Pi 3 / Zero 2 W (BCM2837/RP3A0, r0p4)
    cortex-a57) var=0x1; part=0xd07; rev=0;;
    cortex-a35) part=0xd04; rev=2;;
    neoverse-n1) var=0x3; part=0xd0c; rev=1
                 feats="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs";;
    a64fx) impl=0x46; var=0x1; part=0x001; rev=0
           feats="fp asimd evtstrm sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm fcma dcpop sve";;
    *) var=0x1; part=0xd07; rev=0;;             # max: no real core; QEMU derives it from a Cortex-A57
  esac
  n=$(nproc)
  for ((i = 0; i < n; i++)); do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: %s\nCPU architecture: 8\n' \
      "$i" "$feats" "$impl"
    printf 'CPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %d\n\n' "$var" "$part" "$rev"
  done >"$file"
}

T_START=$(date +%s)
step() { printf '\n==> [%4ss] %s\n' "$(( $(date +%s) - T_START ))" "$*"; }
info() { printf '    %s\n' "$*"; }
die()  { printf 'ERROR: %s\n' "$*" >&2; exit 2; }
now()  { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

mkdir -p "$WORK"/{debs,wheels,sites,logs,out}

# ---------------------------------------------------------------------------------------------------------------
step "1/5 host tools (debootstrap, qemu-user-static)"
missing=()
command -v debootstrap >/dev/null 2>&1 || [[ -x /usr/sbin/debootstrap ]] || missing+=(debootstrap)
command -v qemu-aarch64-static >/dev/null 2>&1 || missing+=(qemu-user-static)
if [[ ${#missing[@]} -gt 0 ]]; then
  [[ $(id -u) -eq 0 ]] || die "need root to apt-get install ${missing[*]}"
  info "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
DEBOOTSTRAP=$(command -v debootstrap || echo /usr/sbin/debootstrap)
QEMU=$(command -v qemu-aarch64-static)
info "$("$QEMU" --version | head -1)"

install_site() {  # install_site SITE WHEELHOUSE LOG PIP_PLATFORM_ARGS... -- REQS...: pip --target, stamped with REQS
  local site=$1 wheels=$2 log=$3 plat=() reqs=() stamp
  shift 3
  while [[ $1 != -- ]]; do plat+=("$1"); shift; done; shift
  reqs=("$@")
  stamp=$(printf '%s\n' "${reqs[@]}")
  if [[ "$REFRESH" != 1 && -f "$site/.reqs" && "$(cat "$site/.reqs")" == "$stamp" ]]; then
    echo reused; return 0
  fi
  rm -rf "$site"
  "$HOST_PYTHON" -m pip download -q -d "$wheels" "${plat[@]}" "${reqs[@]}" >"$log" 2>&1 \
    && "$HOST_PYTHON" -m pip install -q --no-index --find-links "$wheels" --target "$site" "${plat[@]}" "${reqs[@]}" \
         >>"$log" 2>&1 \
    || { rm -rf "$site"; echo FAILED; return 1; }
  printf '%s' "$stamp" >"$site/.reqs"
  echo installed
}
# The feature comparison both checks use.
COMPARE=$WORK/compare.py
cat >"$COMPARE" <<'PY'
"""Compare one arm64 feature file with the x86 reference: max |diff|, the same in int8 steps, cosine, per level."""
import json, sys
import numpy as np
ref_path, arm_path, manifest_path, min_cos = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
ref, arm = np.load(ref_path), np.load(arm_path)
scales = {o["level"].replace("/", "__"): (o.get("quantization") or {}).get("scale")
          for o in json.load(open(manifest_path))["outputs"]}
worst_cos, worst_lsb, worst_abs, identical = 1.0, 0.0, 0.0, True
for key in sorted(ref.files):
    a, b = ref[key].astype(np.float64).ravel(), arm[key].astype(np.float64).ravel()
    diff = float(np.abs(a - b).max())
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
    lsb = diff / scales[key] if scales.get(key) else float("nan")
    identical &= diff == 0.0
    worst_cos, worst_abs = min(worst_cos, cos), max(worst_abs, diff)
    worst_lsb = max(worst_lsb, lsb) if lsb == lsb else worst_lsb
    print(f"    {key.replace('__', '/'):16s} max|diff|={diff:.5f} ({lsb:.0f} int8 steps)  cosine={cos:.6f}"
          f"  differing={int((a != b).sum())}/{a.size}")
verdict = "identical" if identical else ("close" if worst_cos >= min_cos else "MISMATCH")
print(f"COMPARE {verdict} {worst_cos:.6f} {worst_abs:.5f} {worst_lsb:.0f}")
PY

# ===============================================================================================================
# The install check (CHECK=install or all): what Raspberry Pi OS does, as closely as emulation allows.
# A complete Bookworm arm64 root (both debootstrap stages, the second run in a chroot through binfmt_misc + qemu),
# apt-installed python3-numpy and a Debian C extension built against it (python3-$DEBIAN_EXT: the stand-in for
# picamera2's simplejpeg, which apt does not have outside Raspberry Pi's archive), then systemd/install.sh itself,
# live, in that chroot: its apt step, its venv, its constraints and its pip, all run by arm64 programs under qemu.
# Then, per Pi core: the venv's python must import apt's numpy, import and run apt's extension, embed real images
# with the shipped model and fit and score a detector with edge_agent's own fitting code.
INSTALL_RC=0
declare -A INS_STATUS INS_WALL
if [[ $CHECK == install || $CHECK == all ]]; then
DEV_MOUNTS=()
dev_unmount() {  # undo our mounts, newest first (never the host's)
  local i
  for ((i = ${#DEV_MOUNTS[@]} - 1; i >= 0; i--)); do
    umount "${DEV_MOUNTS[i]}" 2>/dev/null || umount -l "${DEV_MOUNTS[i]}" 2>/dev/null || true
  done
  DEV_MOUNTS=()
}
trap dev_unmount EXIT
dev_mount() { mount "$@"; DEV_MOUNTS+=("${!#}"); }  # dev_mount MOUNT_ARGS... TARGET
guest() {  # guest CPU CMD...: CMD in the device root as root, every arm64 program emulated on qemu -cpu CPU
  local cpu=$1; shift
  # QEMU_CPU is read by the qemu that binfmt_misc starts for each arm64 program; env -i keeps the host's out.
  env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
      DEBIAN_FRONTEND=noninteractive QEMU_CPU="$cpu" PIP_CERT=/etc/ssl/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
      PIP_DEFAULT_TIMEOUT=180 timeout -k 10 "$INSTALL_TIMEOUT" chroot "$DEV_ROOT" "$@"
}
bind_cpuinfo() {  # bind_cpuinfo CPU: the root's /proc/cpuinfo shows that core (PROC_CPUINFO=host: the x86 one)
  if mountpoint -q "$DEV_ROOT/proc/cpuinfo" 2>/dev/null; then umount "$DEV_ROOT/proc/cpuinfo"; fi
  [[ "$PROC_CPUINFO" == host ]] && return 0
  write_cpuinfo "$1" "$WORK/cpuinfo-$1"
  mount --bind "$WORK/cpuinfo-$1" "$DEV_ROOT/proc/cpuinfo"
}
ins_fail() { printf 'INSTALL CHECK FAILED: %s\n' "$*" >&2; INSTALL_RC=1; }

# ---------------------------------------------------------------------------------------------------------------
step "install 1/6 binfmt_misc: arm64 programs run directly, so a chroot behaves as the Pi's own system"
BINFMT=/proc/sys/fs/binfmt_misc
[[ -e $BINFMT/status ]] || mount -t binfmt_misc binfmt_misc "$BINFMT" 2>/dev/null || true
if ! grep -qx enabled "$BINFMT/qemu-aarch64" 2>/dev/null; then
  if ! command -v update-binfmts >/dev/null; then
    info "installing binfmt-support"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binfmt-support >/dev/null || true
  fi
  update-binfmts --enable qemu-aarch64 2>/dev/null || true
fi
grep -qx enabled "$BINFMT/qemu-aarch64" 2>/dev/null \
  || die "no binfmt_misc registration for arm64 (needs a kernel with binfmt_misc and root: mount -t binfmt_misc" \
         "binfmt_misc $BINFMT; update-binfmts --enable qemu-aarch64). Without it only CHECK=interpreters runs."
BINFMT_INTERP=$(awk '/^interpreter/ {print $2}' "$BINFMT/qemu-aarch64")
BINFMT_FLAGS=$(awk '/^flags:/ {print $2}' "$BINFMT/qemu-aarch64")
info "qemu-aarch64 registered: $BINFMT_INTERP, flags ${BINFMT_FLAGS:-none} (QEMU_CPU picks the core per command)"

# ---------------------------------------------------------------------------------------------------------------
step "install 2/6 Debian Bookworm arm64 root at $DEV_ROOT (debootstrap, both stages; Raspberry Pi OS stand-in)"
if [[ -f "$DEV_ROOT/.device-root-done" ]]; then
  info "reused"
else
  if [[ -e "$DEV_ROOT" ]]; then
    [[ -d "$DEV_ROOT/debootstrap" || -z "$(ls -A "$DEV_ROOT" 2>/dev/null)" ]] \
      || die "$DEV_ROOT exists and is not a debootstrap root; remove it or set DEVICE_ROOT"
    grep -q " $DEV_ROOT/" /proc/mounts && die "something is mounted under $DEV_ROOT; unmount it first"
    info "removing half-built root"
    rm -rf --one-file-system "$DEV_ROOT"
  fi
  t0=$(now)
  "$DEBOOTSTRAP" --foreign --arch=arm64 --variant=minbase bookworm "$DEV_ROOT" "$MIRROR" \
      >"$WORK/logs/device-debootstrap1.log" 2>&1 \
    || { tail -20 "$WORK/logs/device-debootstrap1.log"; die "debootstrap (first stage) failed"; }
  info "first stage: $(elapsed "$t0" "$(now)") s"
  t0=$(now)
  # Without binfmt's F flag the kernel looks the interpreter up inside the chroot: put qemu there too.
  [[ "$BINFMT_FLAGS" == *F* ]] || install -D -m 0755 "$QEMU" "$DEV_ROOT$BINFMT_INTERP"
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 QEMU_CPU="${INSTALL_CPUS[0]}" \
      chroot "$DEV_ROOT" /debootstrap/debootstrap --second-stage >"$WORK/logs/device-debootstrap2.log" 2>&1 \
    || { tail -20 "$WORK/logs/device-debootstrap2.log"; die "debootstrap --second-stage (emulated) failed"; }
  touch "$DEV_ROOT/.device-root-done"
  info "second stage, emulated: $(elapsed "$t0" "$(now)") s"
fi
[[ "$BINFMT_FLAGS" == *F* ]] || install -D -m 0755 "$QEMU" "$DEV_ROOT$BINFMT_INTERP"
cat >"$DEV_ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb ${MIRROR%/debian}/debian-security bookworm-security main
EOF
cp /etc/resolv.conf "$DEV_ROOT/etc/resolv.conf"
# The host's CA bundle for the guest's pip (a host behind a TLS-inspecting proxy has its own CA in it).
mkdir -p "$DEV_ROOT/etc/ssl"
cp "${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}" "$DEV_ROOT/etc/ssl/host-ca.crt" 2>/dev/null \
  || cp /etc/ssl/certs/ca-certificates.crt "$DEV_ROOT/etc/ssl/host-ca.crt" \
  || die "no CA bundle on the host for the guest's pip (set PIP_CERT to one)"
dev_mount -t proc proc "$DEV_ROOT/proc"
# A private devpts instance (not the host's), so apt and dpkg have a terminal to log to.
mkdir -p "$DEV_ROOT/dev/pts"
dev_mount -t devpts -o newinstance,ptmxmode=0666 devpts "$DEV_ROOT/dev/pts" 2>/dev/null || true
bind_cpuinfo "${INSTALL_CPUS[0]}"
guest "${INSTALL_CPUS[0]}" /bin/true || die "arm64 programs do not run in $DEV_ROOT (binfmt_misc?)"

# ---------------------------------------------------------------------------------------------------------------
step "install 3/6 apt in the root: python3-numpy and python3-$DEBIAN_EXT (compiled against it), as on the Pi"
APT_PKGS="python3-numpy python3-$DEBIAN_EXT"
if [[ "$REFRESH" != 1 && -f "$DEV_ROOT/.apt-done" && "$(cat "$DEV_ROOT/.apt-done")" == "$APT_PKGS" ]]; then
  info "reused"
else
  t0=$(now)
  { guest "${INSTALL_CPUS[0]}" apt-get -q update \
      && guest "${INSTALL_CPUS[0]}" apt-get install -y -q --no-install-recommends $APT_PKGS; } \
      >"$WORK/logs/device-apt.log" 2>&1 \
    || { tail -20 "$WORK/logs/device-apt.log"; die "apt-get install $APT_PKGS in the root failed"; }
  printf '%s' "$APT_PKGS" >"$DEV_ROOT/.apt-done"
  info "apt-get update + install, emulated: $(elapsed "$t0" "$(now)") s (log: $WORK/logs/device-apt.log)"
fi
guest "${INSTALL_CPUS[0]}" dpkg-query -W -f '    dpkg: ${Package} ${Version} ${Architecture}\n' python3.11 python3-numpy \
  "python3-$DEBIAN_EXT"
read -r APT_NUMPY APT_NUMPY_DIR < <(guest "${INSTALL_CPUS[0]}" python3 -s -c \
  'import os, numpy; print(numpy.__version__, os.path.dirname(numpy.__file__))') \
  || die "the root's python3 cannot import apt's numpy"
info "system python3 imports numpy $APT_NUMPY from $APT_NUMPY_DIR"
DEBIAN_MOD=$DEBIAN_EXT; [[ $DEBIAN_EXT == opencv ]] && DEBIAN_MOD=cv2

# ---------------------------------------------------------------------------------------------------------------
step "install 4/6 systemd/install.sh, live in the root (its apt step, venv, constraints and pip, all emulated)"
# The checkout as a clone would have it (tracked files + untracked ones git does not ignore), fresh each run.
SRC=/opt/src/edge-inspect
rm -rf --one-file-system "$DEV_ROOT$SRC" && mkdir -p "$DEV_ROOT$SRC"
git -C "$REPO" ls-files -z -co --exclude-standard \
  | tar -C "$REPO" --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -C "$DEV_ROOT$SRC" -xf -
# A first install each run (the guest's pip cache in /root/.cache is kept, so PyPI downloads are not re-measured).
rm -rf --one-file-system "$DEV_ROOT/opt/edge-agent"
t0=$(now); rc=0
guest "${INSTALL_CPUS[0]}" bash "$SRC/systemd/install.sh" --no-enable >"$WORK/logs/device-install.log" 2>&1 || rc=$?
INSTALL_WALL=$(elapsed "$t0" "$(now)")
INSTALL_STATUS="rc $rc in $INSTALL_WALL s"
sed 's/^/    | /' "$WORK/logs/device-install.log" | grep -v -e '^    | \(Get\|Selecting\|Preparing\|Unpacking\|Setting up\|Processing\|Reading\|Building\|(Reading\)' \
  -e 'debconf' | tail -25
if [[ $rc -ne 0 ]]; then
  ins_fail "systemd/install.sh exited with $rc after $INSTALL_WALL s (log: $WORK/logs/device-install.log)"
else
  info "install.sh: rc 0 in $INSTALL_WALL s; /opt/edge-agent/constraints.txt:"
  grep -v '^#' "$DEV_ROOT/opt/edge-agent/constraints.txt" | sed 's/^/      /'
  if [[ -n "$DEVICE_EXTRA" ]]; then
    info "DEVICE_EXTRA: pip install -c constraints.txt $DEVICE_EXTRA"
    guest "${INSTALL_CPUS[0]}" /opt/edge-agent/venv/bin/pip install -q -c /opt/edge-agent/constraints.txt \
        $DEVICE_EXTRA >>"$WORK/logs/device-install.log" 2>&1 \
      || ins_fail "pip install $DEVICE_EXTRA with the constraints failed (log: $WORK/logs/device-install.log)"
  fi
  info "what pip put in the venv (pip freeze --local; apt's packages are outside it):"
  guest "${INSTALL_CPUS[0]}" /opt/edge-agent/venv/bin/pip freeze --local 2>/dev/null | grep -v '^edge-inspect' \
    | tr '\n' ' ' | fold -s -w 110 | sed 's/^/      /'; echo
fi

# ---------------------------------------------------------------------------------------------------------------
step "install 5/6 what the constraint prevents: the old install (same venv, pip without constraints)"
NAIVE=/opt/naive-venv
rm -rf --one-file-system "$DEV_ROOT$NAIVE"
COUNTERFACTUAL="not run"
if guest "${INSTALL_CPUS[0]}" python3 -m venv --system-site-packages "$NAIVE" >"$WORK/logs/device-naive.log" 2>&1 \
   && guest "${INSTALL_CPUS[0]}" "$NAIVE/bin/pip" install --dry-run --quiet --report /tmp/naive-report.json \
        --upgrade "$SRC" >>"$WORK/logs/device-naive.log" 2>&1; then
  read -r NAIVE_NUMPY NAIVE_CV < <("$HOST_PYTHON" -c 'import json, sys
r = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.load(open(sys.argv[1]))["install"]}
print(r.get("numpy", "-"), r.get("opencv-python-headless", "-"))' "$DEV_ROOT/tmp/naive-report.json")
  info "pip install --upgrade $SRC without constraints would install numpy $NAIVE_NUMPY," \
       "opencv-python-headless $NAIVE_CV (dry run)"
  if [[ $NAIVE_NUMPY != - ]]; then
    # Install just that numpy into the scratch venv and import apt's extension: the failure a Pi would see.
    guest "${INSTALL_CPUS[0]}" "$NAIVE/bin/pip" install --quiet --no-deps "numpy==$NAIVE_NUMPY" \
        >>"$WORK/logs/device-naive.log" 2>&1 || true
    err=$(guest "${INSTALL_CPUS[0]}" "$NAIVE/bin/python" -c \
      "import numpy; print('numpy', numpy.__version__, 'from', numpy.__file__); import $DEBIAN_MOD
$( [[ $DEBIAN_MOD == scipy ]] && echo 'from scipy import ndimage, linalg' )" 2>&1) && naive_rc=0 || naive_rc=$?
    printf '%s\n' "$err" >>"$WORK/logs/device-naive.log"
    if [[ $naive_rc -ne 0 ]]; then
      COUNTERFACTUAL="numpy $NAIVE_NUMPY in the venv breaks apt's $DEBIAN_MOD: "$(grep -m1 -A1 'A module that was compiled using NumPy 1.x' <<<"$err" | tr '\n' ' ' | sed 's/ *$//')" then $(grep -E 'Error|error' <<<"$err" | tail -1)"
    else
      COUNTERFACTUAL="numpy $NAIVE_NUMPY in the venv: apt's $DEBIAN_MOD still imported (no breakage reproduced)"
    fi
  else
    COUNTERFACTUAL="pip kept apt's numpy even without constraints (no breakage to show)"
  fi
  info "$COUNTERFACTUAL"
else
  info "the dry run failed (log: $WORK/logs/device-naive.log); counterfactual not shown"
fi

# ---------------------------------------------------------------------------------------------------------------
step "install 6/6 the installed agent on each Pi core (${INSTALL_CPUS[*]}): numpy, apt's $DEBIAN_MOD, embed, fit, score"
CHECK_DIR=/opt/check
rm -rf --one-file-system "$DEV_ROOT$CHECK_DIR" && mkdir -p "$DEV_ROOT$CHECK_DIR/good"
BOTTLE=$DATA_DIR/mvtec_ad_bottle
[[ -d "$BOTTLE/train/good" ]] || die "no real images at $BOTTLE (set EDGE_DATA_DIR)"
mapfile -t fit_imgs < <(ls "$BOTTLE/train/good"/*.png | head -n "$N_FIT")
cp "${fit_imgs[@]}" "$DEV_ROOT$CHECK_DIR/good/"
SCORE_IMGS=()
for rel in test/good/000.png test/broken_large/000.png; do
  mkdir -p "$DEV_ROOT$CHECK_DIR/$(dirname "$rel")" && cp "$BOTTLE/$rel" "$DEV_ROOT$CHECK_DIR/$rel"
  SCORE_IMGS+=("$CHECK_DIR/$rel")
done
cp "$REPO/scripts/arm64_fit_check.py" "$DEV_ROOT$CHECK_DIR/"
info "fit on ${#fit_imgs[@]} images of $BOTTLE/train/good (factor $FIT_FACTOR); score ${SCORE_IMGS[*]#$CHECK_DIR/}"
# x86 references for the features: the dev venv, and a twin with the versions install.sh put in the Pi's venv
# (apt's numpy version from PyPI, the same opencv and interpreter), so that arm64 is judged against the same code.
x86_embed() {  # x86_embed OUT LOG [PYTHONPATH for -S]: embed test/good/000.png on the host
  local out=$1 log=$2 rc=0; rm -f "$out"
  if [[ -n "${3:-}" ]]; then
    env -i PATH=/usr/bin:/bin HOME=/nonexistent LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$3:$REPO" \
      "$HOST_PYTHON" -S "$REPO/scripts/arm64_fit_check.py" --embed-only --expect-numpy - --expect-numpy-dir - \
      --good - --score "$BOTTLE/test/good/000.png" --model-dir "$MODEL_DIR" --features-out "$out" >"$log" 2>&1 || rc=$?
  else
    env PYTHONPATH="$REPO" PYTHONDONTWRITEBYTECODE=1 "$HOST_PYTHON" "$REPO/scripts/arm64_fit_check.py" --embed-only \
      --expect-numpy - --expect-numpy-dir - --good - --score "$BOTTLE/test/good/000.png" --model-dir "$MODEL_DIR" \
      --features-out "$out" >"$log" 2>&1 || rc=$?
  fi
  return $rc
}
x86_out=$WORK/out/install-x86.npz
x86_embed "$x86_out" "$WORK/logs/install-x86.log" || { tail "$WORK/logs/install-x86.log"; die "the x86 reference embed failed"; }
x86_versions() { awk '/^NUMPY/ {n=$2} /^CV2/ {c=$2} /^RUNTIME/ {r=$2" "$3" "$4; sub(/,$/, "", r); sub(/\(/, "", r)} END {printf "numpy %s, opencv %s, %s", n, c, r}' "$1"; }
info "x86 dev venv: $(x86_versions "$WORK/logs/install-x86.log")"
twin_out=""
if [[ $INSTALL_RC -eq 0 ]]; then
  mapfile -t twin_reqs < <(echo "numpy==$APT_NUMPY"; guest "${INSTALL_CPUS[0]}" /opt/edge-agent/venv/bin/pip freeze --local \
    2>/dev/null | grep -v -e '^edge-inspect' -e '^numpy==')
  twin=$WORK/sites/x86-install-twin
  r=$(install_site "$twin" "$WORK/wheels-x86" "$WORK/logs/pip-x86-install-twin.log" --only-binary=:all: -- "${twin_reqs[@]}") || true
  if [[ $r != FAILED ]] && x86_embed "$WORK/out/install-x86-twin.npz" "$WORK/logs/install-x86-twin.log" "$twin"; then
    twin_out=$WORK/out/install-x86-twin.npz
    info "x86 twin of the Pi venv ($r): $(x86_versions "$WORK/logs/install-x86-twin.log")"
  else
    info "x86 twin with the venv's versions: not available (log: $WORK/logs/pip-x86-install-twin.log); comparing with the dev venv only"
  fi
fi
if [[ $INSTALL_RC -eq 0 ]]; then
  for cpu in "${INSTALL_CPUS[@]}"; do
    bind_cpuinfo "$cpu"
    log=$WORK/logs/install-fit-$cpu.log; out=$DEV_ROOT/tmp/install-$cpu.npz; rm -f "$out"
    printf '\n  -cpu %s (/proc/cpuinfo: %s)\n' "$cpu" "$PROC_CPUINFO"
    t0=$(now); rc=0
    guest "$cpu" /opt/edge-agent/venv/bin/python "$CHECK_DIR/arm64_fit_check.py" \
        --expect-numpy "$APT_NUMPY" --expect-numpy-dir "$APT_NUMPY_DIR" --debian-ext "$DEBIAN_MOD" \
        --good "$CHECK_DIR/good" --score "${SCORE_IMGS[@]}" --factor "$FIT_FACTOR" \
        --features-out "/tmp/install-$cpu.npz" >"$log" 2>&1 || rc=$?
    INS_WALL[$cpu]=$(elapsed "$t0" "$(now)")
    grep -E '^[A-Z_0-9]+ ' "$log" | sed 's/^/    /'
    if [[ $rc -eq 0 && -f "$out" ]]; then
      cmp=$("$HOST_PYTHON" "$COMPARE" "$x86_out" "$out" "$MODEL_DIR/manifest.json" "$MIN_COSINE" | sed -n 's/^COMPARE //p')
      read -r verdict cos _ lsb <<<"$cmp"
      printf '    %-11s test/good/000.png features vs x86 dev venv: %s, min cosine %s, max %s int8 steps\n' \
        X86 "$verdict" "$cos" "$lsb"
      if [[ -n "$twin_out" ]]; then  # the twin is the judge when there is one
        cmp=$("$HOST_PYTHON" "$COMPARE" "$twin_out" "$out" "$MODEL_DIR/manifest.json" "$MIN_COSINE" | sed -n 's/^COMPARE //p')
        read -r verdict cos _ lsb <<<"$cmp"
        printf '    %-11s test/good/000.png features vs x86 twin (same versions): %s, min cosine %s, max %s int8 steps\n' \
          X86 "$verdict" "$cos" "$lsb"
      fi
      if [[ $verdict == MISMATCH ]]; then INS_STATUS[$cpu]="MISMATCH vs x86"; ins_fail "$cpu: features differ from x86"
      else INS_STATUS[$cpu]=pass; fi
    else
      case $rc in 139) INS_STATUS[$cpu]="CRASH (SIGSEGV)";; 124|137) INS_STATUS[$cpu]="TIMEOUT";;
                  *) INS_STATUS[$cpu]="FAIL (rc $rc)";; esac
      grep -v -E '^[A-Z_0-9]+ ' "$log" | tail -5 | sed 's/^/      /'
      ins_fail "$cpu: ${INS_STATUS[$cpu]} (log: $log)"
    fi
    printf '    => %s in %s s\n' "${INS_STATUS[$cpu]}" "${INS_WALL[$cpu]}"
  done
fi
dev_unmount

{
  echo "| check | result |"; echo "|---|---|"
  echo "| apt numpy in the root | $APT_NUMPY from $APT_NUMPY_DIR |"
  echo "| systemd/install.sh (live, emulated) | $INSTALL_STATUS |"
  echo "| without the constraint | $COUNTERFACTUAL |"
  for cpu in "${INSTALL_CPUS[@]}"; do echo "| $cpu: numpy, $DEBIAN_MOD, embed, fit, score | ${INS_STATUS[$cpu]:-not run} (${INS_WALL[$cpu]:--} s) |"; done
} >"$WORK/install-results.md"
step "install: results ($WORK/install-results.md)"
for cpu in "${INSTALL_CPUS[@]}"; do printf '    %-12s %s (%s s)\n' "$cpu" "${INS_STATUS[$cpu]:-not run}" "${INS_WALL[$cpu]:--}"; done
if [[ $INSTALL_RC -eq 0 ]]; then
  printf '\nOK: install.sh kept apt'"'"'s numpy %s (%s); apt'"'"'s %s imports with it; the agent embedded, fitted and scored on %s.\n' \
    "$APT_NUMPY" "$APT_NUMPY_DIR" "$DEBIAN_MOD" "${INSTALL_CPUS[*]}"
else
  printf '\nFAIL: the install check failed (see above)\n' >&2
fi
fi  # CHECK install
if [[ $CHECK == install ]]; then exit "$INSTALL_RC"; fi

# ---------------------------------------------------------------------------------------------------------------
step "interpreters 2/5 arm64 Bookworm root at $ROOT"
if [[ -f "$ROOT/.stage1-done" ]]; then
  info "debootstrap first stage: reused"
else
  if [[ -e "$ROOT" ]]; then
    # Only ever remove a half-built debootstrap root, never an arbitrary directory someone pointed us at.
    [[ -d "$ROOT/debootstrap" || -z "$(ls -A "$ROOT" 2>/dev/null)" ]] \
      || die "$ROOT exists and is not a debootstrap root; remove it or set ARM64_ROOT"
    info "removing half-built root"
    rm -rf --one-file-system "$ROOT"
  fi
  info "debootstrap --foreign --arch=arm64 --variant=minbase bookworm (log: $WORK/logs/debootstrap.log)"
  t0=$(now)
  "$DEBOOTSTRAP" --foreign --arch=arm64 --variant=minbase bookworm "$ROOT" "$MIRROR" >"$WORK/logs/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/logs/debootstrap.log"; die "debootstrap failed"; }
  touch "$ROOT/.stage1-done"
  info "done in $(elapsed "$t0" "$(now)") s"
fi

# A private apt setup for arm64 package downloads: leaves the host's architectures and lists untouched.
APTDIR=$WORK/apt
APT_OPTS=(-o APT::Architecture=arm64 -o "APT::Architectures::=arm64"
     -o "Dir::Etc=$APTDIR/etc" -o Dir::Etc::sourcelist=sources.list -o Dir::Etc::sourceparts=-
     -o "Dir::Etc::preferencesparts=$APTDIR/etc/preferences.d" -o "Dir::Etc::parts=$APTDIR/etc/apt.conf.d"
     -o "Dir::State=$APTDIR/state" -o "Dir::State::status=$APTDIR/state/status"
     -o "Dir::Cache=$APTDIR/cache" -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
want_stamp="$PY_DEBS"
if [[ "$REFRESH" != 1 && -f "$ROOT/.python-debs" && "$(cat "$ROOT/.python-debs")" == "$want_stamp" \
      && -x "$ROOT/usr/bin/python3.11" ]]; then
  info "python debs: reused ($(ls "$WORK/debs" | wc -l) .debs in $WORK/debs)"
else
  mkdir -p "$APTDIR"/{etc/apt.conf.d,etc/preferences.d,state/lists/partial,cache/archives/partial}
  touch "$APTDIR/state/status"
  cat >"$APTDIR/etc/sources.list" <<EOF
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bookworm main
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bookworm-updates main
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${MIRROR%/debian}/debian-security bookworm-security main
EOF
  if [[ "$REFRESH" == 1 || -z "$(ls "$APTDIR/state/lists" 2>/dev/null | grep -v -e partial -e lock)" ]]; then
    info "apt-get update (private arm64 lists in $APTDIR)"
    apt-get -q "${APT_OPTS[@]}" update >"$WORK/logs/apt-update.log" 2>&1 || { tail "$WORK/logs/apt-update.log"; die "apt-get update failed"; }
  fi
  for pkg in $PY_DEBS; do
    ver=$(apt-cache "${APT_OPTS[@]}" policy "$pkg" | awk '/Candidate:/ {print $2}')
    [[ -n "$ver" && "$ver" != "(none)" ]] || die "no arm64 candidate for $pkg"
    deb=$(ls "$WORK/debs/${pkg}_"*"_arm64.deb" 2>/dev/null | grep -F "_${ver/:/%3a}_" | head -1 || true)
    if [[ -z "$deb" ]]; then
      cached=$(ls "$ROOT/var/cache/apt/archives/${pkg}_"*"_arm64.deb" 2>/dev/null | grep -F "_${ver/:/%3a}_" | head -1 || true)
      if [[ -n "$cached" ]]; then
        cp "$cached" "$WORK/debs/"
      else
        (cd "$WORK/debs" && apt-get -q "${APT_OPTS[@]}" download "$pkg=$ver" >>"$WORK/logs/apt-download.log" 2>&1) \
          || { tail "$WORK/logs/apt-download.log"; die "apt-get download $pkg failed"; }
      fi
      deb=$(ls "$WORK/debs/${pkg}_"*"_arm64.deb" | grep -F "_${ver/:/%3a}_" | head -1)
    fi
    # = dpkg-deb -x, but keeping the merged-/usr symlinks (/lib -> usr/lib ...) that debootstrap made: Bookworm
    # packages still ship files under /lib, and a plain extraction would replace the symlink with a directory.
    dpkg-deb --fsys-tarfile "$deb" | tar -x --keep-directory-symlink -C "$ROOT"
    info "unpacked $(basename "$deb")"
  done
  [[ -L "$ROOT/lib" ]] || die "$ROOT/lib is no longer a symlink: remove $ROOT and rerun"
  printf '%s' "$want_stamp" >"$ROOT/.python-debs"
fi

# qemu-user -L looks every path up under ROOT first and falls back to the host's. debootstrap made ROOT/proc a
# symlink to the host's /proc, so the guest would read the x86 /proc/cpuinfo; a real directory holding only a
# cpuinfo file gives it an arm64 one, while /proc/self and the rest still come from the host (qemu emulates those).
if [[ -L "$ROOT/proc" ]]; then rm "$ROOT/proc"; fi
mkdir -p "$ROOT/proc"
set_cpuinfo() {  # set_cpuinfo CPU: ROOT/proc/cpuinfo for that core (or none: PROC_CPUINFO=host)
  if [[ "$PROC_CPUINFO" == host ]]; then rm -f "$ROOT/proc/cpuinfo"; else write_cpuinfo "$1" "$ROOT/proc/cpuinfo"; fi
}

# Everything the emulated python sees comes from ROOT; env -i keeps the host's PYTHON* and venv out of it.
emu() {  # emu CPU SITE_PATH ARGS... : run the arm64 python3.11 on qemu -cpu CPU with PYTHONPATH=SITE_PATH
  local cpu=$1 site=$2; shift 2
  set_cpuinfo "$cpu"
  env -i PATH=/usr/bin:/bin HOME=/nonexistent LANG=C.UTF-8 PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 \
      PYTHONPATH="$site" \
      timeout -k 10 "$EMU_TIMEOUT" "$QEMU" -cpu "$cpu" -L "$ROOT" "$ROOT/usr/bin/python3.11" -s "$@"
}
pyver=$(emu "${CPUS[0]}" "" -c 'import platform, sys, ssl, hashlib, zlib, bz2, lzma, ctypes, pyexpat, decimal, json
print(platform.python_version(), platform.machine(), ssl.OPENSSL_VERSION)') \
  || die "the emulated python3.11 does not start (missing shared library? rerun with REFRESH=1)"
info "emulated python: $pyver"

# ---------------------------------------------------------------------------------------------------------------
step "interpreters 3/5 aarch64 wheels, one --target dir per interpreter spec"
# The project's device package, copied fresh each run (no bytecode, no tests).
PROJ=$WORK/sites/project
rm -rf "$PROJ" && mkdir -p "$PROJ"
tar -C "$REPO" --exclude=__pycache__ -cf - edge_agent | tar -C "$PROJ" -xf -
info "edge_agent copied to $PROJ"

slug() { printf '%s' "$1" | tr -c 'A-Za-z0-9.\n' '_'; }
reqs_for() {  # the full requirement list for one spec, one per line
  local spec=$1
  printf '%s\n' "${DEVICE_REQS[@]}"
  tr '&' '\n' <<<"$spec"
  [[ "$spec" == tflite-runtime* && "$spec" != *numpy* ]] && echo "numpy<2"
  return 0
}
dist_version() { # dist_version SITE NAME -> installed version from the .dist-info folder name
  { ls "$1" 2>/dev/null || true; } | sed -n "s/^$2-\(.*\)\.dist-info$/\1/p" | head -1
}
declare -A SITE_OF TWIN_OF
for spec in "${SPECS[@]}"; do
  site=$WORK/sites/$(slug "$spec"); twin=$WORK/sites/x86-$(slug "$spec")
  SITE_OF[$spec]=$site; TWIN_OF[$spec]=$twin
  mapfile -t reqs < <(reqs_for "$spec")
  log=$WORK/logs/pip-$(slug "$spec").log
  t0=$(now)
  r=$(install_site "$site" "$WORK/wheels" "$log" "${PLATFORM_ARGS[@]}" -- "${reqs[@]}") || true
  info "$spec: aarch64 $r ($(elapsed "$t0" "$(now)") s)"
  [[ $r != FAILED ]] || { tail -3 "$log" | sed 's/^/      /'; continue; }
  # The x86 twin: the same requirements for this host, so arm64 is compared with the same versions on x86.
  t0=$(now)
  r=$(install_site "$twin" "$WORK/wheels-x86" "$WORK/logs/pip-x86-$(slug "$spec").log" --only-binary=:all: \
        -- "${reqs[@]}") || true
  info "$spec: x86 twin $r ($(elapsed "$t0" "$(now)") s)"
done

# ---------------------------------------------------------------------------------------------------------------
step "interpreters 4/5 embed one image: x86 reference, then each spec under qemu-aarch64 (-cpu ${CPUS[*]}; /proc/cpuinfo: $PROC_CPUINFO)"
SNIPPET=$WORK/embed_check.py
cat >"$SNIPPET" <<'PY'
"""Load the shipped model with edge_agent's FeatureExtractor, embed one image, save and summarise the features."""
import hashlib, json, platform, sys, time
t_start = time.perf_counter()
def stage(name):
    print(f"STAGE {name} {time.perf_counter() - t_start:.1f}s", flush=True)

model_dir, image_path, out_path = sys.argv[1:4]
import numpy as np
stage("numpy imported")
from edge_agent.embed.runtime.interpreter import interpreter_module
mod = interpreter_module()
stage(f"interpreter module {mod.__name__}")
from edge_agent.embed.features import FeatureExtractor
from edge_agent.capture.images import read_image
import cv2
from importlib import metadata
def version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None

if image_path == "synthetic":
    # Deterministic, library-free test picture (used only when the real image is absent).
    y, x = np.mgrid[0:512, 0:512].astype(np.float32) / 512.0
    img = np.stack([128 + 100 * np.sin(9 * x + 3 * y), 128 + 100 * np.cos(7 * y - 2 * x),
                    255 * ((x - .5) ** 2 + (y - .5) ** 2 < .1)], axis=-1).clip(0, 255).astype(np.uint8)
else:
    img = read_image(image_path)
stage(f"image {img.shape}")
t0 = time.perf_counter()
fx = FeatureExtractor(model_dir, delegate="cpu", threads=2)
t_load = time.perf_counter() - t0
stage("model loaded (interpreter allocated)")
t0 = time.perf_counter()
feats = fx.embed_one(img)
t_embed = time.perf_counter() - t0
stage("embedded")
levels = {}
for level in sorted(feats):
    f = np.ascontiguousarray(feats[level], dtype=np.float32)
    levels[level] = {"shape": list(f.shape), "sha256": hashlib.sha256(f.tobytes()).hexdigest()[:16],
                     "sum": round(float(f.sum(dtype=np.float64)), 4)}
    print(f"  {level:16s} {str(tuple(f.shape)):16s} sha256={levels[level]['sha256']} sum={levels[level]['sum']}")
np.savez(out_path, **{k.replace("/", "__"): v for k, v in feats.items()})
summary = {"machine": platform.machine(), "python": platform.python_version(), "module": mod.__name__,
           "ai_edge_litert": version("ai-edge-litert"), "tflite_runtime": version("tflite-runtime"),
           "numpy": np.__version__, "cv2": cv2.__version__, "paho_mqtt": version("paho-mqtt"),
           "load_s": round(t_load, 3), "embed_s": round(t_embed, 3), "total_s": round(time.perf_counter() - t_start, 1),
           "levels": levels}
print("RESULT " + json.dumps(summary), flush=True)
PY


if [[ -f "$IMAGE" ]]; then
  info "image: $IMAGE"
  IMG_ARG=$IMAGE
else
  info "image $IMAGE not found: using a synthetic image (set EDGE_DATA_DIR to use a real one)"
  IMG_ARG=synthetic
fi
info "model: $MODEL_DIR"

REF=$WORK/out/x86.npz
rm -f "$REF"
t0=$(now)
if ! env PYTHONPATH="$REPO" PYTHONDONTWRITEBYTECODE=1 "$HOST_PYTHON" "$SNIPPET" "$MODEL_DIR" "$IMG_ARG" "$REF" \
      >"$WORK/logs/run-x86.log" 2>&1; then
  tail -20 "$WORK/logs/run-x86.log"; die "the x86 reference run failed"
fi
X86_WALL=$(elapsed "$t0" "$(now)")
X86_RESULT=$(sed -n 's/^RESULT //p' "$WORK/logs/run-x86.log")
info "x86 reference ($(uname -m), $("$HOST_PYTHON" -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["module"], r["ai_edge_litert"] or r["tflite_runtime"], "numpy", r["numpy"])' "$X86_RESULT")): ${X86_WALL} s"
grep '^  ' "$WORK/logs/run-x86.log" | sed 's/^/  /'

declare -A RES_STATUS RES_VER RES_NUMPY RES_WALL RES_DETAIL
for spec in "${SPECS[@]}"; do
  site=${SITE_OF[$spec]}
  ver=$(dist_version "$site" ai_edge_litert); [[ -n "$ver" ]] && ver="ai-edge-litert $ver" \
    || { ver=$(dist_version "$site" tflite_runtime); [[ -n "$ver" ]] && ver="tflite-runtime $ver"; }
  RES_VER[$spec]=${ver:--}
  RES_NUMPY[$spec]=$(dist_version "$site" numpy); RES_NUMPY[$spec]=${RES_NUMPY[$spec]:--}
  printf '\n  %s (%s, numpy %s, opencv %s)\n' "$spec" "${RES_VER[$spec]}" "${RES_NUMPY[$spec]}" \
    "$(dist_version "$site" opencv_python_headless)"
  # Same versions on x86 first: the arm64 features are judged against these; the venv reference is shown too.
  twin=${TWIN_OF[$spec]}; twin_out=$WORK/out/x86-$(slug "$spec").npz; rm -f "$twin_out"
  if [[ -f "$twin/.reqs" ]] && env -i PATH=/usr/bin:/bin HOME=/nonexistent LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 \
        PYTHONPATH="$twin:$PROJ" "$HOST_PYTHON" -S "$SNIPPET" "$MODEL_DIR" "$IMG_ARG" "$twin_out" \
        >"$WORK/logs/run-x86-$(slug "$spec").log" 2>&1; then
    base=$twin_out; base_name="x86 same versions"
    cmp=$("$HOST_PYTHON" "$COMPARE" "$REF" "$twin_out" "$MODEL_DIR/manifest.json" "$MIN_COSINE" | sed -n 's/^COMPARE //p')
    printf '    %-12s ... x86 with the same versions vs the venv reference: %s\n' x86_64 "$cmp"
  else
    base=$REF; base_name="x86 venv reference"
    printf '    %-12s ... no x86 twin run (see %s): comparing with the venv reference\n' x86_64 \
      "$WORK/logs/run-x86-$(slug "$spec").log"
  fi
  for cpu in "${CPUS[@]}"; do
    key="$spec|$cpu"
    if [[ ! -f "$site/.reqs" ]]; then
      RES_STATUS[$key]="no-install"; RES_WALL[$key]="-"; RES_DETAIL[$key]="no aarch64 wheels resolved"
      printf '    %-12s not installed, skipped\n' "$cpu"; continue
    fi
    log=$WORK/logs/run-arm64-$(slug "$spec")-$cpu.log
    out=$WORK/out/arm64-$(slug "$spec")-$cpu.npz
    printf '    %-12s ... ' "$cpu"
    rm -f "$out"
    t0=$(now); rc=0
    emu "$cpu" "$site:$PROJ" "$SNIPPET" "$MODEL_DIR" "$IMG_ARG" "$out" >"$log" 2>&1 || rc=$?
    RES_WALL[$key]=$(elapsed "$t0" "$(now)")
    last_stage=$(sed -n 's/^STAGE //p' "$log" | tail -1)
    if [[ $rc -eq 0 && -f "$out" ]]; then
      cmp_out=$("$HOST_PYTHON" "$COMPARE" "$base" "$out" "$MODEL_DIR/manifest.json" "$MIN_COSINE")
      read -r _ verdict cos maxabs lsb < <(grep '^COMPARE' <<<"$cmp_out")
      ref_cmp=$("$HOST_PYTHON" "$COMPARE" "$REF" "$out" "$MODEL_DIR/manifest.json" "$MIN_COSINE" | sed -n 's/^COMPARE //p')
      if [[ "$verdict" == MISMATCH ]]; then RES_STATUS[$key]="MISMATCH"; else RES_STATUS[$key]="pass"; fi
      res=$(sed -n 's/^RESULT //p' "$log")
      timing=$("$HOST_PYTHON" -c 'import json,sys; r=json.loads(sys.argv[1]); print("load %s s, embed %s s" % (r["load_s"], r["embed_s"]))' "$res")
      RES_DETAIL[$key]="$verdict vs $base_name (min cosine $cos, max|diff| $maxabs = $lsb int8 steps); vs venv reference: ${ref_cmp%% *}; $timing"
      printf '%s in %s s: %s\n' "${RES_STATUS[$key]}" "${RES_WALL[$key]}" "${RES_DETAIL[$key]}"
      [[ "$verdict" == identical ]] || grep -v '^COMPARE' <<<"$cmp_out"
    else
      case $rc in
        139) RES_STATUS[$key]="CRASH (SIGSEGV, rc 139)";;
        134) RES_STATUS[$key]="CRASH (SIGABRT, rc 134)";;
        132) RES_STATUS[$key]="CRASH (SIGILL, rc 132)";;
        135) RES_STATUS[$key]="CRASH (SIGBUS, rc 135)";;
        124|137) RES_STATUS[$key]="TIMEOUT (${EMU_TIMEOUT} s)";;
        *) RES_STATUS[$key]="FAIL (rc $rc)";;
      esac
      RES_DETAIL[$key]="after stage: ${last_stage:-start}; $(grep -v -e '^STAGE' -e '^\s*$' -e 'arm64_device_check.sh: line' "$log" | tail -1 | cut -c1-120)"
      printf '%s in %s s\n      %s\n      log: %s\n' "${RES_STATUS[$key]}" "${RES_WALL[$key]}" "${RES_DETAIL[$key]}" "$log"
    fi
  done
done

# ---------------------------------------------------------------------------------------------------------------
step "interpreters 5/5 results (/proc/cpuinfo: $PROC_CPUINFO, image: $(basename "$IMG_ARG"), model: $(basename "$MODEL_DIR"), wall s per emulated run)"
TABLE=$WORK/results.md
{
  printf '| spec | installed | numpy |'; printf ' %s |' "${CPUS[@]}"; echo
  printf '|---|---|---|'; printf -- '---|%.0s' "${CPUS[@]}"; echo
  for spec in "${SPECS[@]}"; do
    printf '| `%s` | %s | %s |' "$spec" "${RES_VER[$spec]}" "${RES_NUMPY[$spec]}"
    for cpu in "${CPUS[@]}"; do printf ' %s (%s s) |' "${RES_STATUS[$spec|$cpu]}" "${RES_WALL[$spec|$cpu]}"; done
    echo
  done
  echo
  for spec in "${SPECS[@]}"; do for cpu in "${CPUS[@]}"; do
    echo "- \`$spec\` on $cpu: ${RES_STATUS[$spec|$cpu]}, ${RES_WALL[$spec|$cpu]} s; ${RES_DETAIL[$spec|$cpu]}"
  done; done
} >"$TABLE"
short() { case $1 in pass) echo pass;; MISMATCH) echo MISMATCH;; CRASH*SIGSEGV*) echo SEGV;; CRASH*) echo CRASH;;
          TIMEOUT*) echo TIMEOUT;; no-install) echo no-wheel;; *) echo FAIL;; esac; }
printf '%-26s %-21s %-7s' spec installed numpy; printf ' %-15s' "${CPUS[@]}"; echo
for spec in "${SPECS[@]}"; do
  printf '%-26s %-21s %-7s' "$spec" "${RES_VER[$spec]}" "${RES_NUMPY[$spec]}"
  for cpu in "${CPUS[@]}"; do printf ' %-15s' "$(short "${RES_STATUS[$spec|$cpu]}") ${RES_WALL[$spec|$cpu]}s"; done
  echo
done
info "x86 reference run: ${X86_WALL} s; markdown table and details: $TABLE; logs: $WORK/logs"
info "total: $(( $(date +%s) - T_START )) s"

pin=${SPECS[0]}; failed=(); checked=()
for cpu in "${REQUIRED_CPUS[@]}"; do
  [[ " ${CPUS[*]} " == *" $cpu "* ]] || continue
  checked+=("$cpu")
  [[ "${RES_STATUS[$pin|$cpu]}" == pass ]] || failed+=("$cpu: ${RES_STATUS[$pin|$cpu]}")
done
[[ ${#checked[@]} -gt 0 ]] || { checked=("${CPUS[0]}"); [[ "${RES_STATUS[$pin|${CPUS[0]}]}" == pass ]] \
  || failed+=("${CPUS[0]}: ${RES_STATUS[$pin|${CPUS[0]}]}"); }
if [[ ${#failed[@]} -gt 0 ]]; then
  printf '\nFAIL: the pinned interpreter %s (%s) did not pass on arm64: %s\n' "$pin" "${RES_VER[$pin]}" "${failed[*]}" >&2
  exit 1
fi
printf '\nOK: the pinned interpreter %s (%s) runs the shipped model on arm64 (%s) and matches x86.\n' \
  "$pin" "${RES_VER[$pin]}" "${checked[*]}"
[[ $INSTALL_RC -eq 0 ]] || printf 'FAIL: the install check failed (see its results above)\n' >&2
exit "$INSTALL_RC"
