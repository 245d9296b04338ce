#!/usr/bin/env bash
# Voxbox on-device installer: turns a fresh Raspberry Pi OS Lite (Debian 12 Bookworm or
# 13 Trixie) into a Voxbox unit. Run as root on the unit, from a checkout of the repository:
#
#   sudo ./provisioning/install.sh [options]
#
# It installs the apt packages, creates the `voxbox` system user (groups audio and gpio),
# installs the package into a virtual environment under /opt/voxbox, checks that the
# wake-word models load, installs and enables voxbox.service and voxbox-firstboot.service,
# and puts /etc/voxbox/config.toml in place if there is none (an existing one is never
# overwritten). Idempotent: a second run changes nothing and says so.
#
# Options:
#   --source DIR|WHEEL  install the Python package from this checkout or wheel
#                       (default: the checkout this script lives in). The unit files and
#                       the example configuration always come from this script's checkout.
#   --prefix DIR        install root (default /opt/voxbox; the venv is DIR/venv). A prefix
#                       other than /opt/voxbox is written into the installed unit files.
#   --extras LIST       pip extras, comma-separated (default: none)
#   --no-apt            do not run apt-get (offline re-runs); fails if a package is missing
#   --wheelhouse DIR    also look for packages in DIR (pip --find-links)
#   --offline           do not use any package index (pip --no-index); with --wheelhouse
#   --no-model-check    only check that the model files exist, do not load them
#   --dry-run           say what would be done, change nothing
#   --verbose           show pip's and apt's output
#   --journal-upload-url URL
#                       forward the journal to this systemd-journal-remote collector
#                       (https://HOST[:PORT]): installs systemd-journal-remote and
#                       provisioning/journal-upload.conf as
#                       /etc/systemd/journal-upload.conf.d/voxbox.conf, enables
#                       systemd-journal-upload; the TLS files go in
#                       /etc/voxbox/journal-upload/ (docs/journald.md)
#   -h, --help          this help
#
# Log: /var/log/voxbox-install.log (and standard error).
set -euo pipefail
umask 022  # the service user must be able to read what is installed

SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
DEFAULT_PREFIX=/opt/voxbox

SOURCE=$REPO_DIR
PREFIX=$DEFAULT_PREFIX
EXTRAS=
# GPIO: gpiozero's lgpio pin factory (the one backend for Pi 4 and Pi 5). lgpio publishes
# no cp313 wheel and needs liblgpio to build, so it comes from Raspberry Pi OS's own
# python3-lgpio package, which the venv sees (--system-site-packages) on ARM.
GPIO_APT=python3-lgpio
SYSTEM_SITE=0
DO_APT=1
WHEELHOUSE=
OFFLINE=0
MODEL_LOAD=1
DRY_RUN=0
VERBOSE=0
JOURNAL_UPLOAD_URL=

SERVICE_USER=voxbox
STATE_DIR=/var/lib/voxbox
ETC_DIR=/etc/voxbox
UNIT_DIR=/etc/systemd/system
LOG_FILE=/var/log/voxbox-install.log
UNITS=(voxbox.service voxbox-firstboot.service)

# Runtime and build packages (pyalsaaudio and systemd-python are built from source).
APT_PACKAGES=(
    python3 python3-venv python3-dev gcc pkg-config  # the venv and the native builds
    libasound2-dev alsa-utils                        # pyalsaaudio (pulls in the ALSA library); aplay/arecord -L
    libspeexdsp1                                     # echo canceller and preprocessor (ctypes)
    libsystemd-dev systemd                           # systemd-python (sd_notify, journald); the units
    ca-certificates                                  # pip over HTTPS
    passwd util-linux                                # useradd/groupadd, runuser, flock
)

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

while (($#)); do
    case "$1" in
        --source) SOURCE=${2:?--source needs a directory or a wheel}; shift 2 ;;
        --source=*) SOURCE=${1#*=}; shift ;;
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
        --prefix=*) PREFIX=${1#*=}; shift ;;
        --extras) EXTRAS=${2?--extras needs a list}; shift 2 ;;
        --extras=*) EXTRAS=${1#*=}; shift ;;
        --no-apt) DO_APT=0; shift ;;
        --wheelhouse) WHEELHOUSE=${2:?--wheelhouse needs a directory}; shift 2 ;;
        --wheelhouse=*) WHEELHOUSE=${1#*=}; shift ;;
        --offline) OFFLINE=1; shift ;;
        --no-model-check) MODEL_LOAD=0; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        --verbose|-v) VERBOSE=1; shift ;;
        --journal-upload-url) JOURNAL_UPLOAD_URL=${2:?--journal-upload-url needs a URL}; shift 2 ;;
        --journal-upload-url=*) JOURNAL_UPLOAD_URL=${1#*=}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

# https only; no characters that would need quoting in sed or in the file
JU_URL_RE='^https://[][A-Za-z0-9.:-]+(/[A-Za-z0-9._/-]*)?$'
if [ -n "$JOURNAL_UPLOAD_URL" ]; then
    [[ "$JOURNAL_UPLOAD_URL" =~ $JU_URL_RE ]] ||
        { echo "install.sh: --journal-upload-url must be https://HOST[:PORT][/PATH]: $JOURNAL_UPLOAD_URL" >&2; exit 2; }
    APT_PACKAGES+=(systemd-journal-remote)
fi

# ------------------------------------------------------------------------ logging
CHANGES=0
PLANNED=()

_log() {
    local line
    line="$(date '+%Y-%m-%d %H:%M:%S') $*"
    printf '[voxbox-install] %s\n' "$*" >&2
    if ((!DRY_RUN)) && [ -w "$(dirname "$LOG_FILE")" ]; then
        printf '%s\n' "$line" >> "$LOG_FILE" 2>/dev/null || true
    fi
}
log() { _log "$*"; }
ok() { _log "ok: $*"; }
die() { _log "ERROR: $*"; exit 1; }
# changed MESSAGE: record (and log) a change that was made, or would be made in a dry run
changed() {
    CHANGES=$((CHANGES + 1))
    PLANNED+=("$*")
    if ((DRY_RUN)); then _log "would: $*"; else _log "change: $*"; fi
}
# run CMD...: run a command that changes the system (printed only in a dry run)
run() {
    if ((DRY_RUN)); then
        _log "  would run: $*"
        return 0
    fi
    _log "  run: $*"
    "$@"
}
# quiet CMD...: run it, its output shown only with --verbose or when it fails
quiet() {
    if ((DRY_RUN)); then
        _log "  would run: $*"
        return 0
    fi
    _log "  run: $*"
    if ((VERBOSE)); then
        "$@"
        return
    fi
    local out rc=0
    out=$(mktemp)
    "$@" >"$out" 2>&1 || rc=$?
    if ((rc)); then
        cat "$out" >&2
        if [ -w "$(dirname "$LOG_FILE")" ]; then cat "$out" >> "$LOG_FILE" 2>/dev/null || true; fi
    fi
    rm -f "$out"
    return "$rc"
}

# ------------------------------------------------------------------ preconditions
if ((!DRY_RUN)) && [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo $0 ...), or use --dry-run"
fi

if ((!DRY_RUN)) && command -v flock >/dev/null 2>&1; then
    mkdir -p /run/lock 2>/dev/null || true
    if { exec 9>/run/lock/voxbox-install.lock; } 2>/dev/null; then
        flock -n 9 || die "another install.sh is running (lock /run/lock/voxbox-install.lock)"
    fi
fi

case "$PREFIX" in /*) ;; *) die "--prefix must be an absolute path: $PREFIX" ;; esac
PREFIX=${PREFIX%/}
VENV=$PREFIX/venv
for f in "$REPO_DIR/systemd/voxbox.service" "$SCRIPT_DIR/voxbox-firstboot.service" \
         "$SCRIPT_DIR/config.example.toml"; do
    [ -f "$f" ] || die "$f is missing: run this script from a Voxbox checkout"
done
if [ -d "$SOURCE" ]; then
    SOURCE=$(cd "$SOURCE" && pwd)
    [ -f "$SOURCE/pyproject.toml" ] || die "--source $SOURCE: no pyproject.toml (not a Voxbox checkout?)"
    SOURCE_KIND=dir
elif [ -f "$SOURCE" ] && [[ "$SOURCE" == *.whl ]]; then
    SOURCE=$(cd "$(dirname "$SOURCE")" && pwd)/$(basename "$SOURCE")
    SOURCE_KIND=wheel
else
    die "--source must be a checkout directory or a .whl file: $SOURCE"
fi

OS_ID=unknown OS_CODENAME=unknown
if [ -r /etc/os-release ]; then
    # shellcheck disable=SC1091
    OS_ID=$(. /etc/os-release && echo "${ID:-unknown}")
    # shellcheck disable=SC1091
    OS_CODENAME=$(. /etc/os-release && echo "${VERSION_CODENAME:-unknown}")
fi
ARCH=$(dpkg --print-architecture 2>/dev/null || uname -m)
case "$OS_CODENAME" in
    bookworm|trixie) ;;
    *) log "warning: tested on Debian/Raspberry Pi OS bookworm and trixie, this is $OS_ID $OS_CODENAME" ;;
esac
if [ "$ARCH" = armhf ]; then
    log "warning: 32-bit userland: ai-edge-litert and onnxruntime publish no armv7l wheels," \
        "the pip step will most likely fail; use the 64-bit Raspberry Pi OS"
fi
case "$ARCH" in arm64|armhf|aarch64|armv7l|armv6l) SYSTEM_SITE=1 ;; esac
log "Voxbox install: $OS_ID $OS_CODENAME $ARCH; source $SOURCE ($SOURCE_KIND); prefix $PREFIX;" \
    "extras ${EXTRAS:-none}$( ((SYSTEM_SITE)) && echo "; GPIO from $GPIO_APT")$( ((DRY_RUN)) && echo '; DRY RUN')"

# ------------------------------------------------------------------- 1. apt packages
step_apt() {
    local missing=() p
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        ok "apt packages installed (${#APT_PACKAGES[@]})"
        return
    fi
    if ((!DO_APT)); then
        die "apt packages missing: ${missing[*]} (run without --no-apt, or install them)"
    fi
    changed "install apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    quiet apt-get update
    quiet apt-get install -y --no-install-recommends "${missing[@]}"
}

step_gpio() {
    ((SYSTEM_SITE)) || return 0
    if dpkg-query -W -f='${Status}' "$GPIO_APT" 2>/dev/null | grep -q "ok installed"; then
        ok "$GPIO_APT installed (gpiozero's lgpio pin factory)"
        return
    fi
    if ((DO_APT)) && [ -n "$(apt-cache policy "$GPIO_APT" 2>/dev/null | sed -n 's/^ *Candidate: *//p' | grep -v '(none)')" ]; then
        changed "install apt package: $GPIO_APT"
        quiet apt-get install -y --no-install-recommends "$GPIO_APT"
        return
    fi
    # plain Debian has no lgpio package: the unit runs, the button and LED do not
    log "warning: $GPIO_APT is not available on $OS_ID $OS_CODENAME (Raspberry Pi OS has it):" \
        "no GPIO pin factory; set gpio.enabled = false, or install lgpio (see hardware/README.md)"
}

# --------------------------------------------------------------- 2. groups and user
step_user() {
    local g
    for g in audio gpio; do
        if getent group "$g" >/dev/null; then
            ok "group $g exists"
        else
            # Raspberry Pi OS has gpio (its udev rules give it /dev/gpiochip*); Debian has not.
            changed "create system group $g"
            run groupadd --system "$g"
        fi
    done
    if ! getent passwd "$SERVICE_USER" >/dev/null; then
        changed "create system user $SERVICE_USER (home $STATE_DIR, no login, groups audio,gpio)"
        run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "Voxbox voice appliance" \
            --groups audio,gpio "$SERVICE_USER"
    else
        ok "user $SERVICE_USER exists"
        local have
        have=" $(id -nG "$SERVICE_USER") "
        for g in audio gpio; do
            if [[ "$have" != *" $g "* ]]; then
                changed "add $SERVICE_USER to group $g"
                run usermod -a -G "$g" "$SERVICE_USER"
            fi
        done
    fi
    # StateDirectory=voxbox: systemd makes it voxbox:voxbox 0755 at start; same here.
    if [ -d "$STATE_DIR" ]; then
        ok "$STATE_DIR exists"
    else
        changed "create $STATE_DIR"
        run install -d -m 0755 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR"
    fi
}

# ------------------------------------------------------------ 3. virtual environment
step_venv() {
    local sys_ver venv_ver
    if ! sys_ver=$(python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null); then
        ((DRY_RUN)) || die "python3 does not run"
        sys_ver=none
    fi
    if ((!DRY_RUN)); then
        python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
            die "Python $sys_ver is too old: Voxbox needs 3.11 or later"
    fi
    local venv_opts=() site=false have_site
    ((SYSTEM_SITE)) && venv_opts=(--system-site-packages) && site=true
    venv_ver=$("$VENV/bin/python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null) || venv_ver=
    have_site=$(sed -n 's/^include-system-site-packages *= *//p' "$VENV/pyvenv.cfg" 2>/dev/null || true)
    if [ -n "$venv_ver" ] && [ "$venv_ver" = "$sys_ver" ] && [ "$have_site" = "$site" ]; then
        ok "virtual environment $VENV (Python $venv_ver$( ((SYSTEM_SITE)) && echo ', sees the system packages'))"
        return
    fi
    if [ -e "$VENV" ]; then
        changed "re-create virtual environment $VENV (Python ${venv_ver:-broken} -> $sys_ver, system packages $site)"
        run python3 -m venv --clear "${venv_opts[@]}" "$VENV"
    else
        changed "create virtual environment $VENV (Python $sys_ver${venv_opts:+, ${venv_opts[*]}})"
        run install -d -m 0755 "$PREFIX"
        run python3 -m venv "${venv_opts[@]}" "$VENV"
    fi
}

# ------------------------------------------------------------------- 4. the package
STAGE=
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() { [ -n "$STAGE" ] && rm -rf "$STAGE"; return 0; }
trap cleanup EXIT

pip_opts() {
    PIP_OPTS=(--no-input --disable-pip-version-check --progress-bar off)
    [ -n "$WHEELHOUSE" ] && PIP_OPTS+=(--find-links "$WHEELHOUSE")
    ((OFFLINE)) && PIP_OPTS+=(--no-index)
    ((VERBOSE)) || PIP_OPTS+=(-q)
    return 0
}

PACKAGE_CHANGED=0
step_package() {
    local stamp_file=$VENV/.voxbox-install-stamp want spec py_ver
    STAGE=$(mktemp -d /tmp/voxbox-install.XXXXXX)
    if [ "$SOURCE_KIND" = dir ]; then
        # Build from a clean copy of what setuptools needs, so the checkout is not written
        # to (build/, *.egg-info) and the stamp covers exactly what is installed.
        local parts=() p
        for p in pyproject.toml setup.cfg setup.py MANIFEST.in README.md LICENSE LICENSE.txt device; do
            [ -e "$SOURCE/$p" ] && parts+=("$p")
        done
        tar -C "$SOURCE" --exclude=__pycache__ --exclude='*.egg-info' --exclude='*.pyc' \
            -cf - "${parts[@]}" | tar -C "$STAGE" -xf -
        want=$(cd "$STAGE" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum)
        spec=$STAGE
    else
        want=$(sha256sum < "$SOURCE")
        spec=$SOURCE
    fi
    py_ver=$("$VENV/bin/python" -c 'import sys; print(sys.version)' 2>/dev/null || echo none)
    want=$(printf '%s\nextras=%s\npython=%s\n' "${want%% *}" "$EXTRAS" "$py_ver" | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$stamp_file" 2>/dev/null)" = "$want" ] &&
        "$VENV/bin/python" -c 'import voxbox' 2>/dev/null; then
        ok "voxbox $("$VENV/bin/python" -c 'import voxbox; print(voxbox.__version__)') installed from this source"
        return
    fi
    PACKAGE_CHANGED=1
    changed "pip install voxbox${EXTRAS:+[$EXTRAS]} from $SOURCE into $VENV"
    pip_opts
    local rc=0
    # a local directory is always re-installed by pip; a wheel of an installed version is not
    quiet "$VENV/bin/python" -m pip install "${PIP_OPTS[@]}" "$spec${EXTRAS:+[$EXTRAS]}" || rc=$?
    if ((rc == 0)) && [ "$SOURCE_KIND" = wheel ]; then
        quiet "$VENV/bin/python" -m pip install "${PIP_OPTS[@]}" --force-reinstall --no-deps "$spec" || rc=$?
    fi
    if ((rc)); then
        ((OFFLINE)) && log "hint: offline install: the wheelhouse needs every dependency as a wheel" \
            "(make it with: $VENV/bin/pip wheel -w DIR '<checkout>[${EXTRAS}]' on a unit of the same kind)"
        die "pip install failed (exit $rc)"
    fi
    if ((!DRY_RUN)); then
        "$VENV/bin/python" -m pip check >/dev/null 2>&1 ||
            log "warning: pip check: $("$VENV/bin/python" -m pip check 2>&1 | tr '\n' ';')"
        STAMP_WANT=$want
    fi
}

# ------------------------------------------------------------------------ 5. models
MODEL_PATH=
step_models() {
    if ((DRY_RUN)) && ! "$VENV/bin/python" -c 'import voxbox' 2>/dev/null; then
        log "would check the wake-word models once the package is installed"
        return
    fi
    local code
    # Run as the service user: it must be able to read the venv and the models.
    code='
import sys
from voxbox.wake.detector import find_model, WakeWordDetector
p = find_model("hey_jarvis")
for f in ("melspectrogram.tflite", "embedding_model.tflite"):
    if not (p.parent / f).is_file():
        sys.exit(f"feature model missing: {p.parent / f}")
if sys.argv[1] == "1":
    import numpy as np
    det = WakeWordDetector("hey_jarvis")
    det.process(np.zeros(1280, dtype=np.int16), 0.0)
print(p)
'
    local as_user=()
    if getent passwd "$SERVICE_USER" >/dev/null && command -v runuser >/dev/null && [ "$(id -u)" -eq 0 ]; then
        as_user=(runuser -u "$SERVICE_USER" --)
    fi
    # HOME/XDG_CACHE_HOME: the service user's home may not exist yet
    MODEL_PATH=$(cd / && "${as_user[@]}" env HOME=/tmp XDG_CACHE_HOME=/tmp \
        "$VENV/bin/python" -c "$code" "$MODEL_LOAD" 2>&1) ||
        die "wake-word models: $(printf '%s' "$MODEL_PATH" | tail -n 5)"
    MODEL_PATH=$(printf '%s' "$MODEL_PATH" | tail -n 1)
    if ((MODEL_LOAD)); then
        ok "wake-word model hey_jarvis loads ($MODEL_PATH)"
    else
        ok "wake-word model hey_jarvis present ($MODEL_PATH)"
    fi
    # only now is the package known to be complete
    if [ -n "${STAMP_WANT:-}" ]; then
        printf '%s\n' "$STAMP_WANT" > "$VENV/.voxbox-install-stamp"
    fi
}

# -------------------------------------------------------------- 6. /etc/voxbox
step_config() {
    if [ -d "$ETC_DIR" ]; then
        ok "$ETC_DIR exists"
    else
        changed "create $ETC_DIR"
        run install -d -m 0755 -o root -g root "$ETC_DIR"
    fi
    # same owner and mode as voxbox.field.firstboot gives it
    local cfg_group=root
    getent group "$SERVICE_USER" >/dev/null && cfg_group=$SERVICE_USER
    if [ -e "$ETC_DIR/config.toml" ]; then
        ok "$ETC_DIR/config.toml exists (kept as it is)"
    else
        changed "install $ETC_DIR/config.toml from provisioning/config.example.toml"
        run install -m 0644 -o root -g "$cfg_group" "$SCRIPT_DIR/config.example.toml" "$ETC_DIR/config.toml"
    fi
    if [ -d "$ETC_DIR/credentials" ]; then
        ok "$ETC_DIR/credentials exists"
    else
        changed "create $ETC_DIR/credentials (0700)"
        run install -d -m 0700 -o root -g root "$ETC_DIR/credentials"
    fi
}

# --------------------------------------------------------------------- 7. systemd
UNITS_CHANGED=0
SYSTEMD_RUNNING=0
[ -d /run/systemd/system ] && SYSTEMD_RUNNING=1

render_unit() {  # render_unit SRC: the unit with the venv path of this prefix
    if [ "$PREFIX" = "$DEFAULT_PREFIX" ]; then
        cat "$1"
    else
        sed "s#$DEFAULT_PREFIX/venv/#$PREFIX/venv/#g" "$1"
    fi
}

step_units() {
    local unit src tmp
    for unit in "${UNITS[@]}"; do
        if [ "$unit" = voxbox.service ]; then src=$REPO_DIR/systemd/$unit; else src=$SCRIPT_DIR/$unit; fi
        tmp=$(mktemp)
        render_unit "$src" > "$tmp"
        if cmp -s "$tmp" "$UNIT_DIR/$unit"; then
            ok "$UNIT_DIR/$unit up to date"
        else
            changed "install $UNIT_DIR/$unit$([ "$PREFIX" != "$DEFAULT_PREFIX" ] && echo " (ExecStart under $VENV)")"
            run install -D -m 0644 -o root -g root "$tmp" "$UNIT_DIR/$unit"
            UNITS_CHANGED=1
        fi
        rm -f "$tmp"
    done
    if ((UNITS_CHANGED && SYSTEMD_RUNNING)); then
        run systemctl daemon-reload
    fi
    for unit in "${UNITS[@]}"; do
        if ((DRY_RUN)) && [ ! -e "$UNIT_DIR/$unit" ]; then
            changed "enable $unit"
        elif systemctl is-enabled --quiet "$unit" 2>/dev/null; then
            ok "$unit enabled"
        else
            # works without a running systemd too (in a chroot, or on an image being built)
            changed "enable $unit"
            run systemctl enable "$unit"
        fi
    done
    if ((SYSTEMD_RUNNING && (UNITS_CHANGED || PACKAGE_CHANGED))) &&
        systemctl is-active --quiet voxbox.service; then
        changed "restart the running voxbox.service"
        run systemctl try-restart voxbox.service
    fi
}

# ------------------------------------------------- 8. journal upload (optional)
step_journal_upload() {
    [ -n "$JOURNAL_UPLOAD_URL" ] || return 0
    local dst=/etc/systemd/journal-upload.conf.d/voxbox.conf dir=$ETC_DIR/journal-upload
    local ju=systemd-journal-upload tmp restart=0 f missing=()
    tmp=$(mktemp)
    sed "s|^URL=.*|URL=$JOURNAL_UPLOAD_URL|" "$SCRIPT_DIR/journal-upload.conf" > "$tmp"
    if cmp -s "$tmp" "$dst"; then
        ok "$dst up to date"
    else
        changed "install $dst (URL=$JOURNAL_UPLOAD_URL)"
        run install -D -m 0644 -o root -g root "$tmp" "$dst"
        restart=1
    fi
    rm -f "$tmp"
    # The service runs with DynamicUser=yes as user $ju; a static user of that name is
    # used when one exists (systemd.exec(5)), which lets the key be readable by its group.
    if ! getent passwd "$ju" >/dev/null; then
        changed "create system user $ju (reads the TLS key)"
        run useradd --system --user-group --no-create-home --home-dir / --shell /usr/sbin/nologin \
            --comment "systemd Journal Upload" "$ju"
    fi
    if [ ! -d "$dir" ]; then
        changed "create $dir (the TLS files: client.key, client.pem, ca.pem)"
        run install -d -m 0755 -o root -g root "$dir"
    fi
    for f in client.key client.pem ca.pem; do [ -e "$dir/$f" ] || missing+=("$f"); done
    if ((${#missing[@]})); then
        log "warning: TLS files missing in $dir: ${missing[*]} (docs/journald.md); copy them in and run this again"
    elif [ "$(stat -c '%U:%G %a' "$dir/client.key")" != "root:$ju 640" ]; then
        changed "$dir/client.key: owner root:$ju, mode 0640"
        run chown "root:$ju" "$dir/client.key"
        run chmod 0640 "$dir/client.key"
        restart=1
    fi
    if systemctl is-enabled --quiet "$ju.service" 2>/dev/null; then
        ok "$ju.service enabled"
    else
        changed "enable $ju.service"
        run systemctl enable "$ju.service"
    fi
    if ((SYSTEMD_RUNNING && restart)); then
        run systemctl try-restart "$ju.service"
    fi
}

step_apt
step_gpio
step_user
step_venv
step_package
step_models
step_config
step_units
step_journal_upload

# ---------------------------------------------------------------------- summary
version=$("$VENV/bin/voxbox" --version 2>/dev/null || echo "voxbox (not installed yet)")
cred="missing: install it with: install -m 0600 KEYFILE $ETC_DIR/credentials/voxbox-api-key"
[ -s "$ETC_DIR/credentials/voxbox-api-key" ] && cred=present
log "---------------------------------------------------------------- summary"
log "package:     $version in $VENV"
log "wake model:  ${MODEL_PATH:-not checked}"
log "user:        $SERVICE_USER ($(id -nG "$SERVICE_USER" 2>/dev/null || echo 'not created'))"
log "config:      $ETC_DIR/config.toml; check it with: $VENV/bin/voxbox check-config"
log "credential:  $cred"
log "units:       ${UNITS[*]} in $UNIT_DIR$( ((SYSTEMD_RUNNING)) || echo ' (systemd not running: start on next boot)')"
if ((DRY_RUN)); then
    log "dry run: $CHANGES change(s) would be made"
elif ((CHANGES == 0)); then
    log "nothing to do: already installed, nothing changed"
else
    log "done: $CHANGES change(s) made"
    ((SYSTEMD_RUNNING)) && log "start it with: systemctl start voxbox (or reboot)"
fi
exit 0
