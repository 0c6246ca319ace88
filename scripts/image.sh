#!/usr/bin/env bash
# Builds the container image chargerd:dev FROM scratch: the release chargerd and
# chargectl, exactly the shared libraries `ldd` lists for them (and the dynamic
# loader), and a passwd entry for the unprivileged user chargerd (uid 65532).
# No base image is pulled. Idempotent: re-running rebuilds and re-tags.
#
#   scripts/image.sh
#
# Environment: IMAGE (default chargerd:dev), IMAGE_STRIP (1: strip debug info
# from the staged binaries, the default; 0: keep it), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${IMAGE:-chargerd:dev}
target=${CARGO_TARGET_DIR:-target}
ctx="$target/docker-context"
bins=(chargerd chargectl)

die() { echo "image.sh: $*" >&2; exit 1; }
command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "cannot reach the Docker daemon (is it running, may this user use it?)"
command -v ldd >/dev/null || die "ldd is missing (package libc-bin)"

echo "== cargo build --release --bin chargerd --bin chargectl"
cargo build --release -q --bin chargerd --bin chargectl || die "release build failed"

echo "== staging $ctx"
rm -rf "$ctx"
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/etc" "$ctx/rootfs/etc/chargerd" "$ctx/data"
declare -A libs=()
for b in "${bins[@]}"; do
  src="$target/release/$b"
  [[ -x "$src" ]] || die "$src is missing after the build"
  cp "$src" "$ctx/rootfs/usr/local/bin/$b"
  if [[ "${IMAGE_STRIP:-1}" == 1 ]]; then
    command -v strip >/dev/null || die "strip is missing (binutils); or set IMAGE_STRIP=0"
    strip --strip-debug "$ctx/rootfs/usr/local/bin/$b"
  fi
  # `ldd` lines: "name => /path (addr)", "/path (addr)" (the loader), or
  # "linux-vdso.so.1 (addr)" (in the kernel, nothing to copy).
  out=$(ldd "$src") || die "ldd $src failed"
  if grep -q 'not found' <<<"$out"; then die "ldd $src: a library is missing: $(grep 'not found' <<<"$out")"; fi
  while read -r path; do libs[$path]=1; done < <(awk '
    $2 == "=>" && $3 ~ /^\// { print $3; next }
    $1 ~ /^\// { print $1 }' <<<"$out")
done
((${#libs[@]} > 0)) || die "ldd listed no libraries: a static binary needs no staging, but this script expects glibc"
for path in "${!libs[@]}"; do
  mkdir -p "$ctx/rootfs$(dirname "$path")"
  cp -L "$path" "$ctx/rootfs$path" # the file itself, not the symlink
  echo "   $path"
done
printf 'root:x:0:0:root:/:/sbin/nologin\nchargerd:x:65532:65532:chargerd:/data:/sbin/nologin\n' >"$ctx/rootfs/etc/passwd"
printf 'root:x:0:\nchargerd:x:65532:\n' >"$ctx/rootfs/etc/group"
cp deploy/Dockerfile "$ctx/Dockerfile"

rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git diff --quiet HEAD 2>/dev/null; then rev="$rev-dirty"; fi
echo "== docker build -t $image ($rev)"
# The legacy builder needs no buildx plugin and is enough for one COPY layer.
# Its deprecation notice goes to stderr: shown only if the build fails.
if ! DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} docker build -q -t "$image" --build-arg "REVISION=$rev" \
  "$ctx" >"$ctx/build.log" 2>&1; then
  cat "$ctx/build.log" >&2
  die "docker build failed"
fi

# The image must run: this catches a missing library or loader at once.
docker run --rm --network none --entrypoint /usr/local/bin/chargerd "$image" --version >/dev/null ||
  die "$image does not run chargerd (missing library?)"
docker run --rm --network none --entrypoint /usr/local/bin/chargectl "$image" --version >/dev/null ||
  die "$image does not run chargectl (missing library?)"
size=$(docker image inspect -f '{{.Size}}' "$image")
echo "built $image: $((size / 1000)) kB ($(docker image inspect -f '{{.Id}}' "$image" | cut -c8-19))"
