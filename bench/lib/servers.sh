# The four NBD servers compared, each on a Unix socket of its own. Sourced by bench/run, which sets
# cbd, bench_tool, work, sockets and export_size first.
#
#   cbd          cbd serve, every setting at its default (LZ4, 64 KiB lblks, 64 MiB cache)
#   cbd-zstd     the same with zstd at its default level
#   nbdkit-file  nbdkit's file plugin on a sparse raw file
#   qemu-nbd     qemu-nbd on a qcow2 image, as a user would serve one for a VM

server_names=(cbd cbd-zstd nbdkit-file qemu-nbd)
declare -A server_pid=() server_backing=() server_uri=() server_hwm_kib=() server_stop_seconds=()

# A new cbd image of the corpus' logical size. Physical size: as large, sparse, so even
# incompressible writes always fit.
format_cbd() {
  local image="$1" compression="$2"
  "$cbd" format "$image" --size "$export_size" --logical-size "$export_size" --compression "$compression" \
    ${cbd_format_args[@]+"${cbd_format_args[@]}"}
}

# start_server NAME [DIR [TAG]]: NAME serving a fresh export, its backing file in DIR (default:
# work), its logs named NAME-TAG.
start_server() {
  local name="$1" dir="${2:-$work}" tag="$1${3:+-$3}" socket="$sockets/$1.sock"
  local log="$work/$tag.log"
  local pidfile="$sockets/$1.pid"
  rm -f "$socket" "$pidfile"
  case "$name" in
    cbd | cbd-zstd)
      local image="$dir/$name.cbd"
      rm -f "$image"
      format_cbd "$image" "$([[ $name == cbd ]] && echo lz4 || echo zstd)" >"$work/$tag-format.log" 2>&1 \
        || { cat "$work/$tag-format.log" >&2; die "formatting $image failed"; }
      "$cbd" serve "$image" --socket "$socket" --pid-file "$pidfile" ${cbd_serve_args[@]+"${cbd_serve_args[@]}"} >"$log" 2>&1 &
      server_backing[$name]="$image"
      ;;
    nbdkit-file)
      local raw="$dir/nbdkit.raw"
      rm -f "$raw"
      truncate -s "$export_size" "$raw"
      # --unix alone: nbdkit opens no TCP port.
      nbdkit --foreground --unix "$socket" --pidfile "$pidfile" file "$raw" >"$log" 2>&1 &
      server_backing[$name]="$raw"
      ;;
    qemu-nbd)
      local qcow2="$dir/qemu.qcow2"
      rm -f "$qcow2"
      qemu-img create -q -f qcow2 "$qcow2" "$export_size"
      # --persistent: serve one client after another; --shared: nbdcopy opens several connections.
      # --cache=writeback is qemu-nbd's default, spelled out; --discard=unmap lets trims and
      # zero writes free clusters, as they do on the other servers.
      qemu-nbd --socket="$socket" --pid-file="$pidfile" --format=qcow2 --cache=writeback \
        --discard=unmap --persistent --shared=8 "$qcow2" >"$log" 2>&1 &
      server_backing[$name]="$qcow2"
      ;;
    *) die "unknown server $name" ;;
  esac
  server_pid[$name]=$!
  server_uri[$name]="nbd+unix:///?socket=$socket"
  # Ready once it wrote its pid file and answers a handshake.
  local i
  for ((i = 0; i < 300; i++)); do
    kill -0 "${server_pid[$name]}" 2>/dev/null || { cat "$log" >&2; die "$name exited on start (log above)"; }
    if [[ -s "$pidfile" ]] && nbdinfo --size "${server_uri[$name]}" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  cat "$log" >&2
  die "$name did not answer on $socket within 30 s"
}

# Peak resident memory (VmHWM) of a running server, in KiB.
server_peak_kib() {
  awk '/^VmHWM:/ { print $2 }' "/proc/${server_pid[$1]}/status" 2>/dev/null || echo 0
}

# SIGTERM, a grace period (cbd writes back and closes its image clean), then SIGKILL; by pid only.
stop_server() {
  local name="$1" pid="${server_pid[$1]:-}" i
  [[ -n "$pid" ]] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    server_hwm_kib[$name]="$(server_peak_kib "$name")"
    local t0
    t0="$(now)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 600; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name (pid $pid) still running 60 s after SIGTERM: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    server_stop_seconds[$name]="$(elapsed "$t0" "$(now)")"
  fi
  wait "$pid" 2>/dev/null || true
  unset 'server_pid[$name]'
}

stop_all_servers() {
  local name
  for name in "${server_names[@]}"; do
    stop_server "$name"
  done
}
