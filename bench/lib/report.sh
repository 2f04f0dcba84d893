# Results: the markdown report and the ratio chart, from bench/run's measurements. Sourced by
# bench/run, which sets out, work, and the variables named in write_report.
#
# measurements.tsv: server  workload  round  seconds  MB/s  IOPS   (IOPS "-" for the nbdcopy steps)

# bench/run sets the workloads it runs.
workloads=(w1 w2 randwrite randread warmread seqwrite w4in w4out)
declare -A workload_short=(
  [w1]="W1 copy in" [w2]="W2 copy out" [randwrite]="W3 rand write 4K"
  [randread]="W3 rand read 4K" [warmread]="W3 rand read 4K, warm" [seqwrite]="W3 seq write 1M"
  [w4in]="W4 slow copy in" [w4out]="W4 slow copy out"
)
declare -A workload_title=(
  [w1]="\`nbdcopy --flush corpus.img EXPORT\` into the fresh export; MB/s is the corpus' logical bytes (zero runs included) over the time taken"
  [w2]="\`nbdcopy EXPORT out.img\`, then out.img's sha256 compared with the corpus' (not timed); MB/s as W1"
  [randwrite]="fio random write, 4 KiB blocks, iodepth 16, time-based, ending with a flush that fio counts in the time"
  [randread]="fio random read, 4 KiB blocks, iodepth 16, time-based, the page cache dropped first"
  [warmread]="the same with the page cache warm: the server's backing file read whole (\`cat\`) first"
  [seqwrite]="fio sequential write of the whole export, 1 MiB blocks, iodepth 16, \`buffer_compress_percentage=60\`, \`refill_buffers\`, ending with a flush"
  [w4in]="W1 into a fresh export whose backing file is on a slow disk of its own (see the W4 section)"
  [w4out]="W2 from that export, the page cache dropped first, so every byte the server reads crosses the throttle"
)

# best SERVER WORKLOAD: "seconds MB/s IOPS" of the round with the highest throughput.
best() {
  awk -F'\t' -v s="$1" -v w="$2" '
    $1 == s && $2 == w && (!found || $5 + 0 > best + 0) { found = 1; best = $5; line = $4 " " $5 " " $6 }
    END { if (found) print line; else print "- - -" }' "$work/measurements.tsv"
}

# Throughput of A relative to B (>1: A is faster); "-" when either is missing.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'; }

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "-"; else printf "%.3f", a / b }'; }

write_table() {
  local w s sec mbps iops
  echo "| workload | server | seconds | MB/s | IOPS | vs nbdkit-file | vs qemu-nbd |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
  for w in "${workloads[@]}"; do
    local ref_nbdkit ref_qemu
    ref_nbdkit="$(best nbdkit-file "$w" | cut -d' ' -f2)"
    ref_qemu="$(best qemu-nbd "$w" | cut -d' ' -f2)"
    for s in "${server_names[@]}"; do
      read -r sec mbps iops <<<"$(best "$s" "$w")"
      [[ "$iops" == "-" ]] || iops="$(printf '%.0f' "$iops")"
      local label=""
      [[ "$s" != "${server_names[0]}" ]] || label="${workload_short[$w]}"
      echo "| $label | $s | $sec | $mbps | $iops | $(ratio "$mbps" "$ref_nbdkit")× | $(ratio "$mbps" "$ref_qemu")× |"
    done
  done
}

write_space_table() {
  local s phys floor_name floor_bytes
  echo "| server | bytes allocated after W1 | MiB | per logical byte | vs floor |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  for s in "${server_names[@]}"; do
    phys="${physical_bytes[$s]:-0}"
    case "$s" in
      cbd) floor_bytes="${floor[lz4_floor_bytes]}"; floor_name="LZ4" ;;
      cbd-zstd) floor_bytes="${floor[zstd_floor_bytes]}"; floor_name="zstd" ;;
      *) floor_bytes="" ;;
    esac
    local vs="-"
    [[ -z "$floor_bytes" ]] || vs="$(div "$phys" "$floor_bytes")× the $floor_name floor"
    echo "| $s | $phys | $(mib "$phys") | $(div "$phys" "$corpus_bytes") | $vs |"
  done
  echo "| floor, LZ4 level ${floor[lz4_level]} | ${floor[lz4_floor_bytes]} | $(mib "${floor[lz4_floor_bytes]}") | $(div "${floor[lz4_floor_bytes]}" "$corpus_bytes") | |"
  echo "| floor, zstd level ${floor[zstd_level]} | ${floor[zstd_floor_bytes]} | $(mib "${floor[zstd_floor_bytes]}") | $(div "${floor[zstd_floor_bytes]}" "$corpus_bytes") | |"
}

write_memory_table() {
  local s
  echo "| server | peak RSS (VmHWM) MiB | stop after SIGTERM, s |"
  echo "| --- | ---: | ---: |"
  for s in "${server_names[@]}"; do
    echo "| $s | $(awk -v k="${server_hwm_kib[$s]:-0}" 'BEGIN { printf "%.1f", k / 1024 }') | ${server_stop_seconds[$s]:--} |"
  done
}

# The chart: per workload, cbd and cbd-zstd throughput over each reference, as bars growing up
# from 1 (faster) or down (slower) on a log scale.
write_chart() {
  local dat="$work/ratios.dat" w i=0 v col server reference
  : >"$dat"
  for w in "${workloads[@]}"; do
    local line="$i"$'\t'"${workload_short[$w]}"
    for col in "cbd nbdkit-file" "cbd qemu-nbd" "cbd-zstd nbdkit-file" "cbd-zstd qemu-nbd"; do
      read -r server reference <<<"$col"
      v="$(ratio "$(best "$server" "$w" | cut -d' ' -f2)" "$(best "$reference" "$w" | cut -d' ' -f2)")"
      line+=$'\t'"${v/-/NaN}"
    done
    echo "$line" >>"$dat"
    i=$((i + 1))
  done
  # Room above and below the bars for their labels; 1 always in view.
  local yrange
  yrange="$(awk -F'\t' '{ for (i = 3; i <= NF; i++) if ($i != "NaN") { if (!n++ || $i < lo) lo = $i; if ($i > hi) hi = $i } }
    END { if (!n) { lo = 1; hi = 1 } if (lo > 1) lo = 1; if (hi < 1) hi = 1; printf "%g:%g", lo / 1.6, hi * 1.6 }' "$dat")"
  gnuplot <<GNUPLOT
set terminal pngcairo size 1200,650 font "DejaVu Sans,12"
set datafile separator "\t"
set output "$out/ratios.png"
set title "cbd throughput relative to nbdkit-file and qemu-nbd, same run (corpus $(mib "$corpus_bytes") MiB; >1: cbd faster)"
set logscale y 2
set ylabel "throughput ratio (log scale)"
set yrange [$yrange]
set xrange [-0.6:${#workloads[@]}-0.4]
set grid ytics
set key below center horizontal width 2
set style fill solid 0.85 border lc rgb "#333333"
set xtics scale 0
set arrow from graph 0, first 1 to graph 1, first 1 nohead lw 2 lc rgb "black"
w = 0.19
bar(x, k) = x + (k - 1.5) * w
lo(v) = v < 1 ? v : 1
hi(v) = v < 1 ? 1 : v
plot "$dat" using (bar(\$1,0)):3:(bar(\$1,0)-w/2):(bar(\$1,0)+w/2):(lo(\$3)):(hi(\$3)):xtic(2) with boxxyerror lc rgb "#1f77b4" title "cbd / nbdkit-file", \
     "" using (bar(\$1,1)):4:(bar(\$1,1)-w/2):(bar(\$1,1)+w/2):(lo(\$4)):(hi(\$4)) with boxxyerror lc rgb "#9ecae1" title "cbd / qemu-nbd", \
     "" using (bar(\$1,2)):5:(bar(\$1,2)-w/2):(bar(\$1,2)+w/2):(lo(\$5)):(hi(\$5)) with boxxyerror lc rgb "#d62728" title "cbd-zstd / nbdkit-file", \
     "" using (bar(\$1,3)):6:(bar(\$1,3)-w/2):(bar(\$1,3)+w/2):(lo(\$6)):(hi(\$6)) with boxxyerror lc rgb "#ff9896" title "cbd-zstd / qemu-nbd", \
     "" using (bar(\$1,0)):(\$3 >= 1 ? \$3*1.08 : \$3/1.08):(sprintf("%.2f", \$3)) with labels font ",9" notitle, \
     "" using (bar(\$1,1)):(\$4 >= 1 ? \$4*1.08 : \$4/1.08):(sprintf("%.2f", \$4)) with labels font ",9" notitle, \
     "" using (bar(\$1,2)):(\$5 >= 1 ? \$5*1.08 : \$5/1.08):(sprintf("%.2f", \$5)) with labels font ",9" notitle, \
     "" using (bar(\$1,3)):(\$6 >= 1 ? \$6*1.08 : \$6/1.08):(sprintf("%.2f", \$6)) with labels font ",9" notitle
GNUPLOT
}

write_report() {
  local md="$out/results.md"
  {
    echo "# bench/run results"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)),"
    echo "$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) memory, Linux $(uname -r); cbd $(cbd_revision),"
    echo "$(nbdkit --version | head -1), $(qemu-nbd --version | head -1 | cut -d' ' -f1-2), $(fio --version), $(nbdcopy --version | head -1)."
    echo
    echo "Corpus: ext4 image of $(mib "$corpus_bytes") MiB, ${corpus_used_pct}% used, holding $corpus_files files"
    echo "($(mib "$corpus_file_bytes") MiB) sampled from ${corpus_sources[*]}; ${floor[zero_lblks]} of its ${floor[lblks]} 64 KiB blocks are all zeroes."
    echo "Each server serves a fresh export of the corpus' size on a Unix socket; the workloads run in the"
    echo "order listed, the servers taking turns at each step. fio: $fio_runtime s per random job, best of"
    echo "$rounds round(s). Page cache dropped before each measured step: $(drop_caches_summary)."
    echo "Ratios are throughput over the reference's (MB/s, or IOPS, which is the same thing): above 1, faster."
    echo
    local w
    for w in "${workloads[@]}"; do
      echo "- ${workload_short[$w]}: ${workload_title[$w]}."
    done
    echo
    write_table
    echo
    local s verified=""
    if [[ $run_main -eq 1 ]]; then
      for s in "${server_names[@]}"; do verified+="${verified:+, }$s ${w2_verified[$s]:-not run}"; done
      echo "W2's out.img against the corpus' sha256: $verified."
      echo
    fi
    [[ $run_w4 -eq 0 ]] || write_w4_section
    [[ $run_main -eq 0 ]] || write_space_section
    echo "## Peak memory"
    echo
    echo "VmHWM of each server's process just before it was stopped, after every workload$([[ $run_main -eq 0 ]] || echo " but W4"), and how long it"
    echo "took to exit once sent SIGTERM."
    echo
    write_memory_table
    echo
    echo "![cbd / reference throughput ratios](ratios.png)"
    echo
    echo "Total wall time: ${total_seconds} s (build $(printf "%.0f" "$build_seconds") s, corpus $(printf "%.0f" "$corpus_build_seconds") s, floor ${floor[seconds]} s)."
    echo "Load average (1 min) at the start: $load_at_start, at the end: $load_at_end; on $(nproc) cores, anything"
    echo "well above the load this run adds (about 2) means other work shared the machine."
  } >"$md"
  write_chart
}

write_space_section() {
  echo "## Space after W1"
  echo
  echo "Bytes allocated to the server's backing file (\`stat\` blocks × 512) once W1's flush returned,"
  echo "for the corpus' $corpus_bytes logical bytes. The floor is what cbd's format needs at the least:"
  echo "each non-zero 64 KiB block of the corpus compressed on its own (plus the format's one-byte tag),"
  echo "rounded up to 4 KiB pblks, or stored whole when that saves no pblk; metadata not counted."
  echo
  write_space_table
  echo
  [[ ${#after_used_bytes[@]} -gt 0 ]] || return 0
  echo "## Space after random writes"
  echo
  echo "After W3, one more fio random 4 KiB write job ($fio_runtime s, fio's random data, ending with a flush) on each"
  echo "cbd server, left idle until its write log held no record and its pblks in use stopped changing (the lblks"
  echo "written back with the fast codec under pressure recompressed): the data pblks its lbats name against the"
  echo "floor of what its export then held (copied out and measured as the corpus was)."
  echo
  echo "| server | idle until settled, s | in pblks, MiB | floor, MiB | vs floor |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  local s
  for s in cbd cbd-zstd; do
    [[ -n "${after_used_bytes[$s]:-}" ]] || continue
    echo "| $s | ${idle_seconds[$s]} | $(mib "${after_used_bytes[$s]}") | $(mib "${after_floor_bytes[$s]}") | $(div "${after_used_bytes[$s]}" "${after_floor_bytes[$s]}")× |"
  done
  echo
}

write_w4_section() {
  local s verified=""
  echo "## W4: a slow disk"
  echo
  echo "Each server's backing file on a disk of its own, fresh for the run: \`nbdkit memory\` behind the rate"
  echo "filter at $slow_disk_mib MiB/s for reads and $slow_disk_mib MiB/s for writes (zeroing and trimming are free there, as"
  echo "they carry no data), made a file by nbdfuse, a loop device on that file, ext4 on the loop device."
  echo "The page cache is dropped before each step (the FUSE file's pages with it), so the server's reads"
  echo "come from the disk. Bytes moved: the loop device's own counters over the step, after the flush"
  echo "and a sync for the copy in. nbdkit-file's raw file and qemu-nbd's qcow2 image are sparse: the"
  echo "corpus' zero runs become holes that cost no bytes on the disk, as they would on a real one."
  echo
  echo "| server | copy in s | written MiB | allocated MiB | copy out s | read MiB |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: |"
  for s in "${server_names[@]}"; do
    echo "| $s | $(best "$s" w4in | cut -d' ' -f1) | $(mib "${w4_written_bytes[$s]:-0}") | $(mib "${w4_physical_bytes[$s]:-0}") | $(best "$s" w4out | cut -d' ' -f1) | $(mib "${w4_read_bytes[$s]:-0}") |"
  done
  echo
  for s in "${server_names[@]}"; do verified+="${verified:+, }$s ${w4_verified[$s]:-not run}"; done
  echo "W4's out.img against the corpus' sha256: $verified."
  echo
}

# The commit cbd was built from, marked when src/ differs from it, and which build ran.
cbd_revision() {
  local rev
  if rev="$(git -C "$root" rev-parse --short HEAD 2>/dev/null)"; then
    git -C "$root" diff --quiet HEAD -- src 2>/dev/null || rev+=" with uncommitted changes in src/"
  else
    rev="(not a git checkout)"
  fi
  # scripts/build-cbd leaves cbd.dll beside the executable only for the JIT build.
  if [[ -f "$root/artifacts/cbd/cbd.dll" ]]; then rev+=", JIT build"; else rev+=", native build"; fi
  [[ ${#cbd_format_args[@]} -eq 0 ]] || rev+=", formatted with \`${cbd_format_args[*]}\`"
  [[ ${#cbd_serve_args[@]} -eq 0 ]] || rev+=", served with \`${cbd_serve_args[*]}\`"
  echo "$rev"
}

drop_caches_summary() {
  if [[ $drop_caches_failed -eq 0 && $drop_caches_ok -gt 0 ]]; then
    echo "yes ($drop_caches_ok times)"
  elif [[ $drop_caches_ok -eq 0 ]]; then
    echo "no (writing /proc/sys/vm/drop_caches failed: not root, or a read-only /proc/sys)"
  else
    echo "partly ($drop_caches_ok of $((drop_caches_ok + drop_caches_failed)) times)"
  fi
}
