# W4's slow disk: a throttled block device with an ext4 filesystem on it, one per server, for a
# backing store slower than the CPU. Sourced by bench/run, which sets work and sockets first.
#
#   nbdkit memory SIZE --filter=rate   a RAM disk served at slow_disk_mib MiB/s each way (the rate
#                                      filter counts reads and writes apart; zeroing and trimming
#                                      are free, as they send no data)
#   nbdfuse                            the disk as a file, MOUNTPOINT/nbd
#   losetup                            a loop device on that file
#   mkfs.ext4 + mount                  a filesystem, where the server's image goes as on any disk
#
# Every byte the filesystem reads or writes crosses the throttle once the page cache is dropped
# (drop_caches drops the FUSE file's pages too). Device-mapper (dm-delay, dm-throttle) would be a
# shorter stack, but needs the dm module, which containers usually lack. Each layer is stopped by
# what it was started with: umount, losetup -d, fusermount3 -u, then nbdkit's pid.

slow_disk_mib=100
declare -A slow_base=() slow_loop=() slow_nbdkit_pid=() slow_fuse_pid=()

# The filesystem's directory of a started slow disk.
slow_dir() { echo "${slow_base[$1]}/mnt"; }

# start_slow_disk NAME BYTES: a fresh throttled disk of BYTES with ext4 on it, mounted.
start_slow_disk() {
  local name="$1" bytes="$2" base="$sockets/slow-$1" log="$work/slow-$1.log" i
  mkdir -p "$base/fuse" "$base/mnt"
  slow_base[$name]="$base"
  # rate= is in bits per second; burstiness 0.1 s: a 2 s default burst would let a whole small
  # copy through unthrottled.
  nbdkit --foreground --unix "$base/disk.sock" --pidfile "$base/nbdkit.pid" --filter=rate \
    memory "$bytes" rate="$((slow_disk_mib * 8))M" burstiness=0.1 >"$log" 2>&1 &
  slow_nbdkit_pid[$name]=$!
  for ((i = 0; i < 100; i++)); do
    [[ -s "$base/nbdkit.pid" ]] && break
    kill -0 "${slow_nbdkit_pid[$name]}" 2>/dev/null || { cat "$log" >&2; die "slow disk $name: nbdkit exited"; }
    sleep 0.1
  done
  nbdfuse --pidfile "$base/fuse.pid" "$base/fuse" --unix "$base/disk.sock" >>"$log" 2>&1 &
  slow_fuse_pid[$name]=$!
  for ((i = 0; i < 100; i++)); do
    [[ -s "$base/fuse.pid" && -f "$base/fuse/nbd" ]] && break
    kill -0 "${slow_fuse_pid[$name]}" 2>/dev/null || { cat "$log" >&2; die "slow disk $name: nbdfuse exited"; }
    sleep 0.1
  done
  slow_loop[$name]="$(losetup --find --show "$base/fuse/nbd")" || die "slow disk $name: no free loop device"
  # Inode tables and journal written now, not by ext4's lazy init thread during a measurement;
  # the first drop_caches pushes them through the throttle before anything is timed.
  mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "${slow_loop[$name]}" >>"$log" 2>&1 \
    || { cat "$log" >&2; die "slow disk $name: mkfs.ext4 failed"; }
  mount -t ext4 "${slow_loop[$name]}" "$base/mnt" || die "slow disk $name: mount failed"
}

# Bytes read and written through a slow disk's loop device so far: "READ WRITTEN".
slow_disk_io() {
  awk '{ printf "%.0f %.0f\n", $3 * 512, $7 * 512 }' "/sys/block/$(basename "${slow_loop[$1]}")/stat"
}

stop_slow_disk() {
  local name="$1" base="${slow_base[$1]:-}" i
  [[ -n "$base" ]] || return 0
  if mountpoint -q "$base/mnt"; then
    umount "$base/mnt" || log "slow disk $name: umount $base/mnt failed"
  fi
  [[ -z "${slow_loop[$name]:-}" ]] || losetup -d "${slow_loop[$name]}" 2>/dev/null || true
  if [[ -n "${slow_fuse_pid[$name]:-}" ]]; then
    mountpoint -q "$base/fuse" && { fusermount3 -u "$base/fuse" || log "slow disk $name: fusermount3 -u failed"; }
    for ((i = 0; i < 100; i++)); do
      kill -0 "${slow_fuse_pid[$name]}" 2>/dev/null || break
      sleep 0.1
    done
    wait "${slow_fuse_pid[$name]}" 2>/dev/null || true
  fi
  if [[ -n "${slow_nbdkit_pid[$name]:-}" ]]; then
    kill -TERM "${slow_nbdkit_pid[$name]}" 2>/dev/null || true
    wait "${slow_nbdkit_pid[$name]}" 2>/dev/null || true
  fi
  unset 'slow_base[$name]' 'slow_loop[$name]' 'slow_fuse_pid[$name]' 'slow_nbdkit_pid[$name]'
}

stop_all_slow_disks() {
  local name
  for name in "${!slow_base[@]}"; do
    stop_slow_disk "$name"
  done
}
