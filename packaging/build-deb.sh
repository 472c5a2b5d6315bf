#!/bin/bash
# Build the Debian package: dist/jobd_<version>_<arch>.deb. No arguments; run it from
# anywhere in the repository (it works from the repository root).
#
# The package holds jobd, its dependencies and the shipped plugins in a virtual
# environment at /opt/jobd, made from the system interpreter (/usr/bin/python3). A
# virtual environment is not relocatable in general, so it is built in a staging root
# at <stage>/opt/jobd and then moved in one step by rewriting the staging path to
# /opt/jobd wherever it was written: the scripts' #! lines, pyvenv.cfg, the activate
# scripts; modules are compiled afterwards with /opt/jobd paths. Nothing else refers
# to it: bin/python is a symlink to /usr/bin/python3.
#
# Because the environment's interpreter is the system's, build on the same Debian
# release as the hosts that install the package; Depends: pins the Python minor
# version the environment was built for.
#
# Environment (all optional):
#   PYTHON        the interpreter to build with (default /usr/bin/python3; must be the
#                 system's, since the package runs it at that path on the target)
#   JOBD_DEB_OUT  where to write the .deb (default dist)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-/usr/bin/python3}
OUT=${JOBD_DEB_OUT:-dist}
# The plugins the project ships; others (examples, tests) stay out of the package.
SHIPPED_PLUGINS=(jobd-shell jobd-http jobd-email)

fail() {
    echo "build-deb: $*" >&2
    exit 1
}

for tool in dpkg-deb dpkg; do
    command -v "$tool" >/dev/null || fail "$tool is missing (Debian package dpkg)"
done
[ -x "$PYTHON" ] || fail "no interpreter at $PYTHON (set PYTHON=/usr/bin/python3.X)"
case "$PYTHON" in
    /usr/bin/*) ;;
    *) fail "$PYTHON is not a system interpreter under /usr/bin; the package would depend on it" ;;
esac
PY_MINOR=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || fail "$PYTHON is Python $PY_MINOR; jobd needs 3.11 or newer"
"$PYTHON" -c 'import ensurepip' 2>/dev/null || fail "$PYTHON cannot make virtual environments (install python3-venv)"
NEXT_MINOR=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1] + 1}")')
ARCH=$(dpkg --print-architecture)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/jobd-deb.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
STAGE=$WORK/root
VENV=$STAGE/opt/jobd

# Install from a copy of the sources, so that the build leaves no build/ or *.egg-info
# behind in the checkout.
mkdir -p "$WORK/src"
tar -C "$ROOT" -cf - \
    --exclude=./.git --exclude=./.venv --exclude=./dist --exclude=./bench \
    --exclude=build --exclude='*.egg-info' --exclude=__pycache__ \
    --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.pytest_cache . |
    tar -C "$WORK/src" -xf -
SOURCES=("$WORK/src")
INCLUDED=()
for plugin in "${SHIPPED_PLUGINS[@]}"; do
    if [ -f "$WORK/src/plugins/$plugin/pyproject.toml" ]; then
        SOURCES+=("$WORK/src/plugins/$plugin")
        INCLUDED+=("$plugin")
    fi
done

echo "build-deb: creating the environment with $PYTHON (Python $PY_MINOR)"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check --no-compile \
    "${SOURCES[@]}"

VERSION=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("jobd"))')
# PEP 440 pre-releases sort before the release in Debian only with a tilde: 1.0rc1 -> 1.0~rc1.
DEB_VERSION=$(echo "$VERSION" | sed -E 's/\.?(a|b|rc|dev)([0-9]+)/~\1\2/g')

# Move the environment to /opt/jobd: rewrite the staging path in every text file.
{ grep -rlIF "$VENV" "$VENV" || true; } | while IFS= read -r file; do
    sed -i "s#$VENV#/opt/jobd#g" "$file"
done
# Compile every module now (the environment is read-only under the unit's
# ProtectSystem=strict), recording /opt/jobd paths rather than the staging ones.
"$VENV/bin/python" -m compileall -q -f -j 0 -s "$STAGE" -p / "$VENV/lib" >/dev/null
if grep -rlF "$STAGE" "$VENV"; then
    fail "the staging path is still written in the files above"
fi
head -n1 "$VENV/bin/jobd" | grep -qx '#!/opt/jobd/bin/python' || fail "unexpected #! line in bin/jobd"

install -d "$STAGE/usr/bin"
ln -s /opt/jobd/bin/jobd "$STAGE/usr/bin/jobd"
ln -s /opt/jobd/bin/jobd-ctl "$STAGE/usr/bin/jobd-ctl"
install -D -m 0644 jobd.service "$STAGE/lib/systemd/system/jobd.service"
install -D -m 0644 packaging/jobd.socket "$STAGE/lib/systemd/system/jobd.socket"
install -D -m 0644 etc/jobd.toml "$STAGE/etc/jobd/jobd.toml"
install -D -m 0644 packaging/jobd.sysusers "$STAGE/usr/lib/sysusers.d/jobd.conf"
install -D -m 0644 packaging/jobd.tmpfiles "$STAGE/usr/lib/tmpfiles.d/jobd.conf"
install -D -m 0644 docs/operations.md "$STAGE/usr/share/doc/jobd/operations.md"
install -D -m 0644 packaging/grafana/jobd.json "$STAGE/usr/share/jobd/grafana/jobd.json"
install -D -m 0644 packaging/prometheus/jobd-rules.yml "$STAGE/usr/share/jobd/prometheus/jobd-rules.yml"

install -d "$STAGE/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "packaging/debian/$script" "$STAGE/DEBIAN/$script"
done
echo /etc/jobd/jobd.toml >"$STAGE/DEBIAN/conffiles"
INSTALLED_SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
cat >"$STAGE/DEBIAN/control" <<EOF
Package: jobd
Version: $DEB_VERSION
Architecture: $ARCH
Maintainer: jobd maintainers <jobd@localhost>
Installed-Size: $INSTALLED_SIZE
Depends: python3 (>= $PY_MINOR), python3 (<< $NEXT_MINOR), adduser | systemd
Section: admin
Priority: optional
Description: background-job daemon with durable queues, retries and plugins
 jobd runs background jobs on a Linux host: durable queues in SQLite or
 PostgreSQL, retries with back-off, per-queue concurrency, a control socket
 (jobd-ctl), Prometheus metrics and systemd integration. Handlers come from
 plugins; included: ${INCLUDED[*]:-none}.
 .
 The package keeps jobd in its own virtual environment under /opt/jobd.
EOF

mkdir -p "$OUT"
DEB="$OUT/jobd_${DEB_VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$DEB" >/dev/null
echo "build-deb: wrote $DEB"
