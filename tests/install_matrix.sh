#!/usr/bin/env bash
# Install matrix: provisioning/install.sh in fresh Debian roots for every target a unit can
# run, one after the other, with a table at the end. On demand only (slow: the amd64
# targets take minutes, the arm64 ones tens of minutes under emulation); not part of the
# default test run. Needs root, debootstrap and the Debian mirror (./dev install-matrix
# does the set-up and calls this).
#
#   tests/install_matrix.sh [TARGET ...]     default: all four, amd64 first
#   tests/install_matrix.sh --setup-qemu     only register qemu for arm64 (see below)
#
# TARGET is SUITE-ARCH: bookworm-amd64 trixie-amd64 bookworm-arm64 trixie-arm64.
#
# Each target is one run of tests/test_install.py (pytest -m slow) with
# VOXBOX_INSTALL_SUITE and VOXBOX_INSTALL_ARCH set: debootstrap a base root (cached as a
# tarball under $VOXBOX_DEBOOTSTRAP_CACHE, default /var/tmp/voxbox-debootstrap-cache),
# install.sh in it (dry run, install, second run, offline re-run), voxbox check-config
# and the wake word on the packaged clip as the voxbox user. CI=1 is set, so a target that
# cannot run fails with its reason instead of being skipped. The table: target, result,
# wall time of the whole run (including the debootstrap when the base root is not
# cached), the first install.sh run alone, the peak wake-word score on the clip, and the
# Python of the root. Logs: $VOXBOX_MATRIX_LOGS (default /var/tmp/voxbox-install-matrix).
#
# arm64 on an amd64 host runs under qemu-user through binfmt_misc. Debian 12's qemu 7.2
# crashes on some wheels (it segfaults on `import onnxruntime`), so this uses qemu 10 from
# Debian 13's qemu-user package, without touching the host's apt sources:
#   1. apt-get update / apt-get download qemu-user with an apt configuration of its own
#      (a sources.list naming only trixie, lists and cache under the cache directory);
#   2. dpkg-deb -x the .deb, check that qemu-aarch64 is statically linked (`file`);
#   3. mount binfmt_misc if it is not, and register qemu-aarch64 with the entry the
#      package ships (usr/share/qemu/binfmt.d/qemu-aarch64.conf, flags OPF: F opens the
#      interpreter now, so the chroot needs no copy of it; P keeps argv[0]), replacing
#      any other qemu-aarch64 entry (e.g. Debian 12's qemu-user-static).
# Idempotent: an entry that already points at this qemu is kept. The registration lasts
# until the next reboot.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${VOXBOX_DEBOOTSTRAP_CACHE:-/var/tmp/voxbox-debootstrap-cache}
QEMU_DIR=$CACHE/qemu
QEMU_SUITE=trixie
MIRROR=${VOXBOX_DEBIAN_MIRROR:-http://deb.debian.org/debian}
LOGS=${VOXBOX_MATRIX_LOGS:-/var/tmp/voxbox-install-matrix}
ALL_TARGETS=(bookworm-amd64 trixie-amd64 bookworm-arm64 trixie-arm64)
PYTHON=${PYTHON:-.venv/bin/python}
BINFMT=/proc/sys/fs/binfmt_misc

log() { printf '[install-matrix] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

HOST_ARCH=$(dpkg --print-architecture)

# qemu's name for a Debian architecture
qemu_name() {
    case "$1" in
        arm64) echo aarch64 ;; armhf) echo arm ;; amd64) echo x86_64 ;; i386) echo i386 ;;
        *) return 1 ;;
    esac
}

# setup_qemu ARCH: make binaries of ARCH run on this host (see the header)
setup_qemu() {
    local arch=$1 q entry
    q=$(qemu_name "$arch") || die "no qemu for architecture $arch"
    entry=$BINFMT/qemu-$q
    local interp=$QEMU_DIR/bin/$q-binfmt-P
    [ "$(id -u)" -eq 0 ] || die "registering qemu with binfmt_misc needs root"
    if [ ! -e "$BINFMT/register" ]; then
        log "mounting binfmt_misc on $BINFMT"
        mount -t binfmt_misc binfmt_misc "$BINFMT"
    fi
    if [ -e "$entry" ] && grep -qx enabled "$entry" && grep -qx "interpreter $interp" "$entry" &&
        grep -q '^flags: .*F' "$entry" && [ -x "$QEMU_DIR/bin/qemu-$q" ]; then
        log "qemu for $arch registered: $("$QEMU_DIR/bin/qemu-$q" --version | head -n 1) ($entry)"
        return
    fi
    if [ ! -x "$QEMU_DIR/bin/qemu-$q" ]; then
        log "fetching qemu-user from Debian $QEMU_SUITE (own apt configuration under $QEMU_DIR/apt)"
        local apt=$QEMU_DIR/apt
        rm -rf "$apt"
        mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/deb"
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $QEMU_SUITE main" \
            > "$apt/sources.list"
        local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
                    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
                    -o "APT::Get::List-Cleanup=false" -o "APT::Sandbox::User=root")
        apt-get "${opts[@]}" -qq update
        (cd "$apt/deb" && apt-get "${opts[@]}" -qq download qemu-user)
        local deb
        deb=$(ls "$apt"/deb/qemu-user_*.deb)
        if ! command -v file >/dev/null; then
            log "installing file (to check that qemu is statically linked)"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends file >/dev/null
        fi
        rm -rf "$QEMU_DIR/x"
        dpkg-deb -x "$deb" "$QEMU_DIR/x"
        file -L "$QEMU_DIR/x/usr/bin/qemu-$q" | grep -q 'statically linked\|static-pie linked' ||
            die "$QEMU_DIR/x/usr/bin/qemu-$q is not statically linked: $(file -L "$QEMU_DIR/x/usr/bin/qemu-$q")"
        mkdir -p "$QEMU_DIR/bin"
        install -m 0755 "$QEMU_DIR/x/usr/bin/qemu-$q" "$QEMU_DIR/bin/qemu-$q"
        cp "$QEMU_DIR/x/usr/share/qemu/binfmt.d/qemu-$q.conf" "$QEMU_DIR/bin/qemu-$q.conf"
        log "got $(basename "$deb"): qemu-$q $(file -L "$QEMU_DIR/bin/qemu-$q" | grep -o 'static[-a-z]* linked')"
        rm -rf "$QEMU_DIR/x" "$apt/lists" "$apt/cache"
    fi
    # qemu-user turns on argv[0] preservation when its name ends in -binfmt-P (as Debian's)
    ln -sfn "qemu-$q" "$interp"
    if [ -e "$entry" ]; then
        log "replacing the binfmt_misc entry qemu-$q ($(sed -n 's/^interpreter //p' "$entry"))"
        echo -1 > "$entry"
    fi
    local line
    line=$(sed -e "s#:/usr/libexec/qemu-binfmt/[^:]*:#:$interp:#" "$QEMU_DIR/bin/qemu-$q.conf")
    case "$line" in *":$interp:"*F*) ;; *) die "unexpected binfmt entry: $line" ;; esac
    printf '%s' "$line" > "$BINFMT/register"
    log "registered $(head -n 1 < <("$QEMU_DIR/bin/qemu-$q" --version)) for $arch: $line"
}

if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 0
fi
if [ "${1:-}" = --setup-qemu ]; then
    setup_qemu arm64
    exit 0
fi

targets=("$@")
((${#targets[@]})) || targets=("${ALL_TARGETS[@]}")
for t in "${targets[@]}"; do
    case "$t" in bookworm-amd64|bookworm-arm64|trixie-amd64|trixie-arm64) ;;
        *) die "unknown target $t (one of: ${ALL_TARGETS[*]})" ;; esac
done
[ -x "$PYTHON" ] || die "$PYTHON not found: run ./dev setup (or ./dev install-matrix)"
mkdir -p "$LOGS"
stamp=$(date +%Y%m%d-%H%M%S)

rows=()
failed=0
for t in "${targets[@]}"; do
    suite=${t%-*} arch=${t#*-}
    logf=$LOGS/$t-$stamp.log
    [ "$arch" = "$HOST_ARCH" ] || setup_qemu "$arch"
    log "$t: pytest -m slow tests/test_install.py (log $logf)"
    t0=$(date +%s)
    rc=0
    VOXBOX_INSTALL_SUITE=$suite VOXBOX_INSTALL_ARCH=$arch CI=1 \
        "$PYTHON" -m pytest -m slow tests/test_install.py -s -p no:cacheprovider \
        -o addopts="-ra" 2>&1 | tee "$logf" || rc=$?
    wall=$(($(date +%s) - t0))
    summary=$(grep -ao '\[test_install\] summary:.*' "$logf" | tail -n 1 || true)
    field() { printf '%s' "$summary" | sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }
    counts=$(grep -aE '^=+ .*(passed|failed|error|skipped).* in [0-9.]+s' "$logf" | tail -n 1 |
             sed -e 's/^=* //' -e 's/ in [0-9.]*s.*//' || true)
    if ((rc == 0)); then result=PASS; else result=FAIL; failed=$((failed + 1)); fi
    rows+=("$(printf '%-15s %-6s %8s %8s %9s %-8s %s' "$t" "$result" \
        "$(printf '%dm%02ds' $((wall / 60)) $((wall % 60)))" "$(field first_install)" \
        "$(field wake_peak)" "$(field python)" "${counts:-no pytest summary}")")
done

printf '\n%-15s %-6s %8s %8s %9s %-8s %s\n' target result wall install wake_peak python tests
printf '%s\n' "${rows[@]}"
printf '(logs in %s/*-%s.log)\n' "$LOGS" "$stamp"
exit $((failed > 0))
