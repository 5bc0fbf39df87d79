#!/usr/bin/env bash
# Builds (once) the container images the container tests run in, and prints the folder
# that holds them. Never pulls from a container registry: the base is a Debian tree made
# by debootstrap from the Debian mirror apt uses, with python3 and nothing else.
#
#   IMAGES/base        debootstrap --variant=minbase --include=python3 bookworm (~40 s, ~260 MB)
#   IMAGES/a, IMAGES/b the base (hard links, so no extra space) with a marker file
#                      /scifaas-test-image holding "a" or "b": only that image has it
#   IMAGES/nopython    the base without python3 (the "python3 missing" failure)
#   IMAGES/oldpython   the base whose python3 claims to be 3.7 (the "too old" failure)
#
# IMAGES is $SCIFAAS_TEST_IMAGES, default target/test-images (cached between runs; delete
# it to rebuild). Needs root (debootstrap; apt-get installs bubblewrap, charliecloud and
# debootstrap when missing) and the Debian mirror. Exits non-zero, saying why, when it
# cannot build; the tests then skip (or fail, with SCIFAAS_REQUIRE_CONTAINERS=1).
set -euo pipefail
cd "$(dirname "$0")/.."
images=${SCIFAAS_TEST_IMAGES:-$PWD/target/test-images}
suite=${SCIFAAS_TEST_IMAGE_SUITE:-bookworm}
mirror=${SCIFAAS_TEST_IMAGE_MIRROR:-}

say() { printf 'build-test-image: %s\n' "$*" >&2; }

complete() { [ -f "$images/$1/scifaas-test-image" ] || [ -f "$images/$1/.scifaas-image-done" ]; }

if complete a && complete b && complete nopython && complete oldpython; then
  echo "$images"
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  say "needs root (debootstrap); run it once as root, or set SCIFAAS_TEST_IMAGES to a built folder"
  exit 1
fi

missing=()
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v ch-run >/dev/null || missing+=(charliecloud)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  if ! apt-get install -y -q "${missing[@]}" >&2; then
    apt-get update -q >&2 && apt-get install -y -q "${missing[@]}" >&2
  fi
fi

mkdir -p "$images"
# One builder at a time: cargo runs test binaries in parallel, and so may two engineers.
exec 9>"$images/.lock"
flock 9
if complete a && complete b && complete nopython && complete oldpython; then
  echo "$images"
  exit 0
fi

if [ ! -f "$images/base/.scifaas-image-done" ]; then
  if [ -z "$mirror" ]; then
    # The mirror apt already uses here (deb822 or one-line sources).
    mirror=$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
      | awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)
    mirror=${mirror:-http://deb.debian.org/debian}
  fi
  say "debootstrap $suite from $mirror into $images/base (about 40 s)"
  rm -rf "$images/base.partial"
  if ! debootstrap --variant=minbase --include=python3 "$suite" "$images/base.partial" "$mirror" \
      >"$images/debootstrap.log" 2>&1; then
    say "debootstrap failed; the end of $images/debootstrap.log:"
    tail -n 20 "$images/debootstrap.log" >&2
    exit 1
  fi
  # Space only: the package cache is not needed to run anything.
  rm -rf "$images/base.partial/var/cache/apt/archives/"*.deb "$images/base.partial/var/lib/apt/lists/"*
  touch "$images/base.partial/.scifaas-image-done"
  rm -rf "$images/base"
  mv "$images/base.partial" "$images/base"
fi

# Derived images share the base's files through hard links; a file that differs is
# removed first and written anew, so the base and its siblings are never changed.
derive() {
  local name=$1
  rm -rf "$images/$name" "$images/$name.partial"
  cp -al "$images/base" "$images/$name.partial"
  rm -f "$images/$name.partial/.scifaas-image-done"
}

for name in a b; do
  derive "$name"
  printf '%s\n' "$name" >"$images/$name.partial/scifaas-test-image"
  mv "$images/$name.partial" "$images/$name"
done

derive nopython
rm -f "$images/nopython.partial/usr/bin/python3" "$images/nopython.partial/usr/bin/python3".*
touch "$images/nopython.partial/.scifaas-image-done"
mv "$images/nopython.partial" "$images/nopython"

derive oldpython
site=$(cd "$images/oldpython.partial" && ls -d usr/lib/python3.*/ | head -n1)
rm -f "$images/oldpython.partial/${site}sitecustomize.py"
cat >"$images/oldpython.partial/${site}sitecustomize.py" <<'EOF'
# scifaas test image: this interpreter pretends to be Python 3.7, older than the
# worker accepts, so that the "python3 too old" failure can be tested for real.
import sys
sys.version_info = (3, 7, 17, "final", 0)
sys.version = "3.7.17 (scifaas test image)"
EOF
touch "$images/oldpython.partial/.scifaas-image-done"
mv "$images/oldpython.partial" "$images/oldpython"

say "images ready in $images"
echo "$images"
