# Shared by bench/run: logging, Debian packages, timing, page-cache dropping. Sourced, not run.

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'bench/run: %s\n' "$*" >&2; exit 1; }

# Seconds since the epoch with nanoseconds, and the difference of two of them.
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# binary:package, as scripts/test. The file plugin ships in nbdkit itself; fio's nbd engine and
# nbdcopy both come with Debian's builds against libnbd.
bench_required=(
  nbdcopy:libnbd-bin nbdinfo:libnbd-bin qemu-img:qemu-utils qemu-nbd:qemu-utils
  fio:fio nbdkit:nbdkit mkfs.ext4:e2fsprogs dumpe2fs:e2fsprogs
  gnuplot:gnuplot-nox jq:jq sha256sum:coreutils numfmt:coreutils
  nbdfuse:libnbd-bin fusermount3:fuse3 losetup:mount mountpoint:util-linux
)

# Prints the packages (once each) whose binaries are not on PATH.
missing_packages() {
  local entry pkgs=" "
  for entry in "${bench_required[@]}"; do
    command -v "${entry%%:*}" >/dev/null 2>&1 || [[ "$pkgs" == *" ${entry#*:} "* ]] || pkgs+="${entry#*:} "
  done
  # shellcheck disable=SC2086 # unquoted on purpose: drops the surrounding spaces
  echo $pkgs
}

install_packages() {
  local missing still as_root
  missing="$(missing_packages)"
  [[ -n "$missing" ]] || return 0
  if [[ "$(id -u)" -eq 0 ]]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    die "missing packages: $missing (not root and no sudo; as root: apt-get install $missing)"
  fi
  command -v apt-get >/dev/null 2>&1 || die "missing packages: $missing (no apt-get to install them)"
  log "installing $missing"
  # Waits for a dpkg lock held by e.g. unattended-upgrades instead of failing at once.
  local apt=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300)
  "${apt[@]}" update >&2 || log "apt-get update failed; trying the install anyway"
  # shellcheck disable=SC2086 # one word per package
  "${apt[@]}" install -y --no-install-recommends $missing >&2 || die "could not install: $missing"
  still="$(missing_packages)"
  [[ -z "$still" ]] || die "installed, yet binaries still missing from: $still"
}

# Checks the features, not just the binaries: a build without them would fail mid-run.
check_features() {
  fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd engine (Debian's fio has it)"
  nbdkit file --version >/dev/null 2>&1 || die "nbdkit has no file plugin"
}

# Writes back dirty pages, then drops the page cache so each measured step starts from the same
# state whichever server ran before it. Needs root and a writable /proc/sys (not in every
# container); a failure is recorded, not fatal. Sets drop_caches_ok / drop_caches_failed.
drop_caches_ok=0
drop_caches_failed=0
drop_caches() {
  sync
  if { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
    drop_caches_ok=$((drop_caches_ok + 1))
  else
    drop_caches_failed=$((drop_caches_failed + 1))
  fi
}

# Allocated bytes of a file (sparse regions and unwritten blocks excluded).
allocated_bytes() { stat -c '%b %B' "$1" | awk '{ printf "%.0f", $1 * $2 }'; }

# SIZE with an optional K/M/G/T suffix (powers of 1024) in bytes.
parse_size() {
  local bytes
  bytes="$(numfmt --from=iec "${1^^}" 2>/dev/null)" || die "size '$1': expected bytes or a K/M/G/T suffix, e.g. 256M"
  echo "$bytes"
}
