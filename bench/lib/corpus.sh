# The corpus: an ext4 image about three quarters full of this machine's own files. Sourced by bench/run.

# Directories sampled, each given an equal share of the byte budget (what one leaves unused goes to
# the next): the .NET SDK (managed and native binaries), shared libraries, and /usr/share's text,
# documentation, locales and icons. /usr/share/dotnet is sampled on its own, not twice.
corpus_sources=(/usr/share/dotnet /usr/lib /usr/share)

# Regular files of a source as "SIZE PATH" lines, sorted by path; other file types (links,
# devices, sockets, fifos) are skipped, and so are files too large to be a sample of many and names
# with a newline.
list_source() {
  local src="$1" prune=()
  [[ "$src" == /usr/share ]] && prune=(-path /usr/share/dotnet -prune -o)
  find "$src" -xdev "${prune[@]}" -type f -size -32M ! -name $'*\n*' -printf '%s %p\n' 2>/dev/null | LC_ALL=C sort -k2
}

# Picks files spread evenly over a source's sorted list (a file of list_source lines) up to BUDGET
# bytes, counted in whole 4 KiB blocks as ext4 stores them: a file is taken while the bytes taken
# stay within the fraction wanted of the bytes seen so far. Appends the paths to LIST; prints the
# bytes taken and the number of directories they need.
select_files() {
  awk -v budget="$2" -v list="$3" '
    { n++; blocks[n] = int(($1 + 4095) / 4096) * 4096; sub(/^[0-9]+ /, ""); path[n] = $0; total += blocks[n] }
    END {
      for (i = 1; i <= n; i++) {
        seen += blocks[i]
        if (taken + blocks[i] <= budget * seen / total) {
          print path[i] >>list
          taken += blocks[i]
          for (d = path[i]; sub(/\/[^\/]*$/, "", d) && d != "" && !(d in dirs);) { dirs[d] = 1; ndirs++ }
        }
      }
      printf "%d %d\n", taken, ndirs
    }' "$1"
}

# select_all BUDGET: fills $list from every source's cached listing; sets taken, files, dirs.
select_all() {
  local remaining="$1" i share t d
  : >"$list"
  taken=0 dirs=0
  for i in "${!corpus_sources[@]}"; do
    share=$((remaining / (${#corpus_sources[@]} - i)))
    read -r t d <<<"$(select_files "$work_dir/source-$i.txt" "$share" "$list")"
    remaining=$((remaining - t))
    taken=$((taken + t))
    dirs=$((dirs + d))
    source_taken[i]=$t
  done
  files="$(wc -l <"$list")"
}

# Bytes an empty ext4 of SIZE bytes with INODES inodes uses: journal, bitmaps, group descriptors,
# inode tables.
empty_overhead() {
  local image="$work_dir/empty.img" blocks free
  rm -f "$image"
  truncate -s "$1" "$image"
  mkfs.ext4 -q -F -b 4096 -N "$2" "$image" >/dev/null 2>&1 || die "mkfs.ext4 of an empty $1-byte image failed"
  blocks="$(dumpe2fs -h "$image" 2>/dev/null | awk -F: '/^Block count/ { print $2 + 0 }')"
  free="$(dumpe2fs -h "$image" 2>/dev/null | awk -F: '/^Free blocks/ { print $2 + 0 }')"
  rm -f "$image"
  echo $(((blocks - free) * 4096))
}

# build_corpus DIR SIZE: writes DIR/corpus.img (SIZE bytes), three quarters used. Sets
# corpus_files, corpus_file_bytes, corpus_used_pct, corpus_build_seconds.
build_corpus() {
  local size="$2" t0 stage target budget predicted i taken dirs files
  local -a source_taken=()
  work_dir="$1"
  list="$work_dir/corpus.list"
  t0="$(now)"
  stage="$work_dir/stage"
  rm -rf "$stage" "$work_dir/corpus.img"
  for i in "${!corpus_sources[@]}"; do
    if [[ -d "${corpus_sources[$i]}" ]]; then
      list_source "${corpus_sources[$i]}" >"$work_dir/source-$i.txt"
    else
      : >"$work_dir/source-$i.txt"
    fi
  done
  # Two passes: a first guess of the budget, then corrected by what ext4 needs beside the file
  # data for that selection (its fixed overhead, inode tables sized to it, a block per directory).
  target=$((size * 3 / 4))
  budget=$((target - $(empty_overhead "$size" 4096)))
  for pass in 1 2; do
    ((budget > 0)) || die "--size $size leaves no room for files"
    select_all "$budget"
    inodes=$((files + dirs + 4096))
    predicted=$((taken + dirs * 4096 + $(empty_overhead "$size" "$inodes")))
    budget=$((budget - (predicted - target)))
  done
  for i in "${!corpus_sources[@]}"; do
    log "corpus: $((source_taken[i] >> 20)) MiB from ${corpus_sources[$i]}"
  done
  corpus_files=$files
  ((corpus_files > 0)) || die "corpus: no files found under ${corpus_sources[*]}"
  mkdir -p "$stage"
  # tar keeps the directory structure and modes; a file that vanished meanwhile is skipped.
  tr '\n' '\0' <"$list" | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$stage"
  corpus_file_bytes="$(du -sb "$stage" | cut -f1)"
  # 4 KiB blocks whatever the size (mke2fs picks 1 KiB below 512 MiB); one inode per file and
  # directory plus room, instead of one per 16 KiB.
  mkfs.ext4 -q -F -b 4096 -N "$inodes" -L cbd-corpus -d "$stage" "$work_dir/corpus.img" "$((size / 1024))k" >"$work_dir/mkfs.log" 2>&1 \
    || { cat "$work_dir/mkfs.log" >&2; die "mkfs.ext4 -d failed"; }
  rm -rf "$stage" "$work_dir"/source-*.txt
  local block_count free_blocks
  block_count="$(dumpe2fs -h "$work_dir/corpus.img" 2>/dev/null | awk -F: '/^Block count/ { print $2 + 0 }')"
  free_blocks="$(dumpe2fs -h "$work_dir/corpus.img" 2>/dev/null | awk -F: '/^Free blocks/ { print $2 + 0 }')"
  corpus_used_pct="$(awk -v b="$block_count" -v f="$free_blocks" 'BEGIN { printf "%.0f", 100 * (b - f) / b }')"
  corpus_build_seconds="$(elapsed "$t0" "$(now)")"
}
