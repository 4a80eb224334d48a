#!/bin/sh
# Builds Runnel's runner-manager image from a host-built binary, with no registry:
#
#   dist/build-image.sh [--binary PATH] [--tag TAG]
#
# PATH defaults to target/release/runnel, TAG to runnel:<version>. Needs docker, ldd, a static
# busybox (Debian: busybox-static), a static tini (Debian: tini, /usr/bin/tini-static) and the
# CA bundle /etc/ssl/certs/ca-certificates.crt.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
binary="$here/../target/release/runnel"
tag=""
while [ $# -gt 0 ]; do
	case "$1" in
	--binary) binary="$2"; shift 2 ;;
	--tag) tag="$2"; shift 2 ;;
	*) echo "usage: $0 [--binary PATH] [--tag TAG]" >&2; exit 2 ;;
	esac
done
[ -x "$binary" ] || { echo "no runnel binary at $binary (cargo build --release first)" >&2; exit 1; }
if [ -z "$tag" ]; then
	version=$("$binary" --version | awk '{print $2}')
	tag="runnel:$version"
fi

find_static() {
	for candidate in "$@"; do
		if [ -x "$candidate" ]; then echo "$candidate"; return 0; fi
	done
	return 1
}
busybox=$(find_static /bin/busybox /usr/bin/busybox) || { echo "a static busybox is needed (apt-get install busybox-static)" >&2; exit 1; }
tini=$(find_static /usr/bin/tini-static /sbin/tini-static) || { echo "a static tini is needed (apt-get install tini)" >&2; exit 1; }
bundle=/etc/ssl/certs/ca-certificates.crt
[ -f "$bundle" ] || { echo "the CA bundle $bundle is needed (apt-get install ca-certificates)" >&2; exit 1; }

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
rootfs="$context/rootfs"
mkdir -p "$rootfs/bin" "$rootfs/usr/bin" "$rootfs/etc/ssl/certs"
cp "$busybox" "$rootfs/bin/busybox"
cp "$tini" "$rootfs/usr/bin/dumb-init"
cp "$binary" "$rootfs/usr/bin/runnel"
ln -s runnel "$rootfs/usr/bin/gitlab-runner"
cp "$bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
cp "$here/entrypoint" "$rootfs/entrypoint"
# The chart runs its scripts with /bin/bash: busybox ash stands in for it.
printf '#!/bin/busybox ash\nexec /bin/busybox ash "$@"\n' > "$rootfs/bin/bash"
chmod 0755 "$rootfs/bin/bash"
# The shared libraries the binary links, and its loader, at their host paths.
ldd "$binary" | awk '/=> \// {print $3} /^\t\// {print $1}' | while read -r lib; do
	mkdir -p "$rootfs$(dirname "$lib")"
	cp -L "$lib" "$rootfs$lib"
done
printf 'root:x:0:0:root:/root:/bin/sh\ngitlab-runner:x:999:999:GitLab Runner:/home/gitlab-runner:/bin/sh\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\ngitlab-runner:x:999:\n' > "$rootfs/etc/group"
cp "$here/Dockerfile" "$context/Dockerfile"
docker build -q -t "$tag" "$context" >/dev/null
echo "$tag"
