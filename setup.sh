#!/usr/bin/env bash
# setup.sh: install what ckptfs needs (Debian 12), build it, then run the demo
# or the test suite. Safe to run again: installed packages and an up-to-date
# build are left alone.
#
#   ./setup.sh demo    install, build, mount two checkpoints and load them through both views
#   ./setup.sh check   install, build, `make check`, again built with ASan+UBSan, a short fuzz run;
#                      last line: "N passed, N failed[, N skipped]"
set -euo pipefail

PACKAGES=(
	build-essential autoconf automake pkg-config
	libfuse3-dev fuse3 libzip-dev zlib1g-dev uthash-dev libjansson-dev libsystemd-dev mandoc
	python3-torch python3-pytest python3-numpy unzip
	clang libclang-rt-14-dev
	acl libseccomp-dev
	nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils libnfs-dev iproute2
)
# Debian's torch lives in the system interpreter, not in any python3 earlier on PATH.
PYTHON=/usr/bin/python3

usage() {
	cat <<'EOF'
usage: ./setup.sh demo|check

  demo    install the Debian packages ckptfs needs, build it, run demo/demo.py
  check   install, build, run `make check` (C unit tests and end-to-end tests),
          then again built with ASan and UBSan, then a short fuzz run;
          the last line reads "N passed, N failed"
EOF
}

say() { printf '==> %s\n' "$*"; }
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }

install_packages() {
	local missing=() p
	for p in "${PACKAGES[@]}"; do
		[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || missing+=("$p")
	done
	if [ ${#missing[@]} -eq 0 ]; then
		say "packages: all ${#PACKAGES[@]} installed"
		return
	fi
	command -v apt-get >/dev/null || die "apt-get not found (this script targets Debian 12); install: ${missing[*]}"
	[ "$(id -u)" -eq 0 ] || die "missing packages: ${missing[*]}
  run this script as root, or install them first:
  sudo apt-get install --no-install-recommends ${missing[*]}"
	say "installing: ${missing[*]}"
	apt-get update || die "apt-get update failed"
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
		|| die "apt-get install failed"
}

build() {
	if [ ! -x configure ]; then
		say "autoreconf -fi"
		autoreconf -fi || die "autoreconf failed"
	fi
	if [ ! -f Makefile ]; then
		say "./configure"
		./configure || die "./configure failed (see config.log)"
	fi
	say "make -j$(nproc)"
	make -j"$(nproc)" || die "build failed"
	[ -x ckptfs ] || die "build finished but ./ckptfs is missing"
}

need_fuse() {
	[ -e /dev/fuse ] || die "/dev/fuse is missing: FUSE is not available on this machine
  (in a container: run it with --device /dev/fuse --cap-add SYS_ADMIN)"
}

fuse_mounts() { grep -E '^[^ ]+ [^ ]+ fuse(\.[^ ]*)? ' /proc/mounts || true; }

# "PASSED FAILED SKIPPED": the TAP results of this run, from the .trs files the
# automake TAP driver writes next to each test's .log: one ":test-result:" line
# per "ok"/"not ok" (and an ERROR for a test that crashed or broke its plan).
count_results() {
	local since=$1
	find . -name '*.trs' -newer "$since" -print0 \
		| xargs -0 -r cat \
		| awk '$1 == ":test-result:" {
			if ($2 == "PASS" || $2 == "XFAIL") pass++
			else if ($2 == "SKIP") skip++
			else fail++
		}
		END { printf "%d %d %d\n", pass, fail, skip }'
}

# The whole suite again with the daemon, the core and the unit tests built
# with AddressSanitizer and UndefinedBehaviorSanitizer, in a copy made by
# `make distdir` (which also proves the distribution is complete).
sanitized_check() {
	local dir=build-asan/ckptfs-san
	local flags="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined"
	say "make check, built with ASan and UBSan (in $dir)"
	rm -rf build-asan
	mkdir build-asan
	make distdir distdir="$dir" >/dev/null || return 1
	(
		cd "$dir" &&
		./configure -q CFLAGS="$flags" LDFLAGS="-fsanitize=address,undefined" &&
		make -j"$(nproc)" >/dev/null &&
		ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
			LSAN_OPTIONS="suppressions=$(pwd)/tests/lsan.supp" \
			make -j"$(nproc)" check VERBOSE=1
	)
}

# A short libFuzzer run of every parser (make fuzz runs them longer).
fuzz_smoke() {
	say "fuzzing, ${FUZZ_SECONDS:-30} s per target"
	FUZZ_SECONDS=${FUZZ_SECONDS:-30} fuzz/run-fuzzers "$PWD" "$PWD/fuzz/out"
}

run_check() {
	local stamp before rc=0 passed failed skipped leftover
	stamp=$(mktemp)
	before=$(fuse_mounts)
	# the corpus beside the checkout, for the copy that sanitized_check builds
	[ -d ../shared/corpus ] && export CKPTFS_CORPUS="${CKPTFS_CORPUS:-$(cd ../shared/corpus && pwd)}"
	say "make check"
	# VERBOSE=1: automake prints the logs of the failed tests (test-suite.log).
	make -j"$(nproc)" check VERBOSE=1 || rc=$?
	sanitized_check || rc=$?
	read -r passed failed skipped < <(count_results "$stamp")
	rm -f "$stamp"
	local fuzz_out
	if fuzz_out=$(fuzz_smoke); then
		printf '%s\n' "$fuzz_out"
		passed=$((passed + $(printf '%s\n' "$fuzz_out" | grep -c 'no crash$')))
	else
		printf '%s\n' "$fuzz_out"
		failed=$((failed + 1))
		rc=1
	fi
	leftover=$(comm -13 <(printf '%s\n' "$before" | sort) <(fuse_mounts | sort) | sed '/^$/d')
	if [ -n "$leftover" ]; then
		printf 'setup.sh: warning: FUSE mounts appeared during make check and are still there:\n%s\n' \
			"$leftover" >&2
	fi
	if [ "$rc" -ne 0 ]; then
		printf 'setup.sh: make check failed (exit %d)\n' "$rc" >&2
	fi
	if [ "$skipped" -gt 0 ]; then
		echo "$passed passed, $failed failed, $skipped skipped"
	else
		echo "$passed passed, $failed failed"
	fi
	[ "$rc" -eq 0 ] && [ "$failed" -eq 0 ]
}

main() {
	case "${1:-}" in
	demo | check) ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
	[ $# -eq 1 ] || { usage >&2; exit 2; }
	cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"

	install_packages
	build
	case "$1" in
	demo)
		need_fuse
		say "$PYTHON demo/demo.py --ckptfs ./ckptfs"
		"$PYTHON" demo/demo.py --ckptfs ./ckptfs
		;;
	check)
		run_check
		;;
	esac
}

main "$@"
