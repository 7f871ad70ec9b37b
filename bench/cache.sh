#!/usr/bin/env bash
# tollgate benchmark: cache snapshots (issue 6). See bench/README.md, "Cache
# snapshots".
#
#   bash bench/cache.sh                    # as root on Debian 12
#   BENCH_ONLY=cache bash bench/run.sh     # the same
#
# Targets: resuming a cached environment costs under 100 ms on top of the
# scripts and the agent, for a 10 MiB snapshot and for a 1 GiB one alike;
# publishing a snapshot takes the same time whatever its size (a rename, not
# a copy).
#
# For each size (empty, 10 MiB, 1 GiB by default) an environment file whose
# setup writes that much data into the workspace; its first `tollgate run`
# (a miss, under strace) builds and publishes the snapshot; then hyperfine
# times hit runs (maintenance empty, agent `true`) next to `tollgate exec`
# and bubblewrap, and a few hit runs under `perf record` (scheduler
# tracepoints only) tell how much of a hit run is spent inside the phases'
# commands, and where the rest goes.
set -euo pipefail

# ---------------------------------------------------------------- settings --
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)

SKIP_BUILD=${BENCH_SKIP_BUILD:-0}        # 1 = use the existing binary
TOLLGATE_BIN=${BENCH_TOLLGATE_BIN:-$REPO/target/release/tollgate}
KEEP_TMP=${BENCH_KEEP_TMP:-0}            # 1 = keep the temp dir (snapshots, logs, traces)
read -r -a SIZES <<<"${BENCH_CACHE_SIZES_MIB:-0 10 1024}"   # MiB written by setup
RUNS=${BENCH_CACHE_RUNS:-20}             # timed hit runs per size, over all rounds
ROUNDS=${BENCH_CACHE_ROUNDS:-4}          # hyperfine invocations for them, sizes' order rotated
WARMUP=${BENCH_CACHE_WARMUP:-2}          # hyperfine --warmup per hit run and round
CTX_RUNS=${BENCH_CACHE_CONTEXT_RUNS:-50} # hyperfine --runs for true, bwrap, tollgate exec
TRACE_RUNS=${BENCH_CACHE_TRACE_RUNS:-5}  # hit runs under perf record per size (0 = none)
DATA=${BENCH_CACHE_DATA:-urandom}        # urandom or zero: what setup's files hold
# HOME inside the phases. Every phase first reads ~/.bashrc; with the default
# base (/) that is the host's /root/.bashrc, which is not tollgate's time (it
# is reported separately). BENCH_CACHE_HOME=/root measures with it.
CACHE_HOME=${BENCH_CACHE_HOME:-/nonexistent}
# MiB of random data committed to the test repo (tracked, unlike setup's
# data/): every run mirrors the repo and checks it out, so this is what a
# big repository costs a resume. 0 = a repo of two small files.
REPO_MIB=${BENCH_CACHE_REPO_MIB:-0}
TARGET_MS=100                            # resume overhead, at most (issue 6)
PUBLISH_MAX_MS=5                         # both publication renames, at most
SIZE_RATIO_MAX=1.20                      # largest / smallest hit, at most

for v in RUNS ROUNDS WARMUP CTX_RUNS TRACE_RUNS REPO_MIB; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "bench: $v must be a whole number, got '${!v}'" >&2; exit 2; }
done
((RUNS >= 2 && CTX_RUNS >= 2 && ROUNDS >= 1)) || { echo "bench: BENCH_CACHE_RUNS and BENCH_CACHE_CONTEXT_RUNS must be >= 2, BENCH_CACHE_ROUNDS >= 1" >&2; exit 2; }
((${#SIZES[@]} > 0)) || { echo "bench: BENCH_CACHE_SIZES_MIB is empty" >&2; exit 2; }
for s in "${SIZES[@]}"; do
    [[ $s =~ ^[0-9]+$ ]] || { echo "bench: BENCH_CACHE_SIZES_MIB: '$s' is not a whole number of MiB" >&2; exit 2; }
done
case $DATA in urandom | zero) ;; *) echo "bench: BENCH_CACHE_DATA must be urandom or zero" >&2; exit 2 ;; esac

unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY
export LC_ALL=C

# ------------------------------------------------------------------- state --
T=""
declare -a NOTES=()
declare -A R=()          # results; "" = failed / n/a
HAVE_PERF=0
STRACE_SECCOMP=()        # --seccomp-bpf when this strace has it

log()  { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
warn() { printf '[bench %s] WARNING: %s\n' "$(date +%H:%M:%S)" "$*" >&2; NOTES+=("$*"); }
die()  { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $T && -d $T ]]; then
        if [[ $KEEP_TMP == 1 ]]; then log "kept temp dir $T"; else rm -rf "$T"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

label() { # label MIB -> "empty", "10 MiB", "1 GiB"
    if (($1 == 0)); then echo "empty"
    elif (($1 % 1024 == 0)); then echo "$(($1 / 1024)) GiB"
    else echo "$1 MiB"; fi
}

fnum() { if [[ -z $2 ]]; then echo "n/a"; else awk -v f="$1" -v x="$2" 'BEGIN { printf f, x }'; fi; }
ratio() { [[ -n $1 && -n $2 ]] || return 0; awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b }'; }
xfmt() { if [[ -n $1 ]]; then echo "${1}x"; else echo "n/a"; fi; }
sub_ms() { [[ -n $1 && -n $2 ]] || return 0; awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a - b }'; }
check_max() { [[ -z $1 ]] && echo "n/a" && return; awk -v v="$1" -v m="$2" 'BEGIN { print (v <= m ? "PASS" : "MISS") }'; }
median() { # median < numbers, one a line -> median with 2 decimals, or ""
    sort -g | awk '{ v[NR] = $1 } END { if (NR) printf "%.2f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# ------------------------------------------------------------------- tools --
install_tools() {
    local -A want=([hyperfine]=hyperfine [bwrap]=bubblewrap [strace]=strace [git]=git
                   [split]=coreutils)
    local cmd missing=() pkgs=()
    export PATH="$PATH:/usr/sbin:/sbin"
    for cmd in "${!want[@]}"; do have "$cmd" || missing+=("$cmd"); done
    if ((${#missing[@]} > 0)); then
        have apt-get || die "missing: ${missing[*]} and no apt-get; this script targets Debian 12"
        log "installing from Debian: missing ${missing[*]}"
        for cmd in "${missing[@]}"; do pkgs+=("${want[$cmd]}"); done
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >&2
        apt-get install -y -q "${pkgs[@]}" >&2
    fi
    # perf is optional: without it there is no breakdown, and the overhead
    # falls back to the whole hit run (an upper bound)
    if ((TRACE_RUNS > 0)) && ! have perf && have apt-get; then
        log "perf not found: trying Debian's linux-perf (optional)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-perf >&2 2>/dev/null || true
    fi
    if ((TRACE_RUNS > 0)) && have perf \
        && perf record -q -o "$T/perf-probe.data" -e sched:sched_process_exec,sched:sched_process_exit,sched:sched_process_fork \
            -- /bin/true >/dev/null 2>&1; then
        HAVE_PERF=1
    elif ((TRACE_RUNS > 0)); then
        warn "perf cannot record sched tracepoints here: no breakdown; resume overhead is bounded by the whole hit run instead"
    fi
    if strace -f --seccomp-bpf -o "$T/strace-probe" -e trace=rename /bin/true 2>/dev/null; then
        STRACE_SECCOMP=(--seccomp-bpf)
    fi
}

build_tollgate() {
    if [[ $SKIP_BUILD == 1 ]]; then log "BENCH_SKIP_BUILD=1: using $TOLLGATE_BIN as is"; return; fi
    [[ -d $HOME/.cargo/bin ]] && export PATH="$PATH:$HOME/.cargo/bin"
    have cargo || die "cargo not found (install Rust >= 1.80), or set BENCH_SKIP_BUILD=1"
    log "building tollgate: cargo build --release (log: $T/cargo-build.log)"
    if ! (cd "$REPO" && cargo build --release) >"$T/cargo-build.log" 2>&1; then
        tail -n 15 "$T/cargo-build.log" >&2
        die "cargo build --release failed"
    fi
}

cpu_busy_pct() { # -> % of all CPUs busy over the next 2 s
    local a b
    a=$(awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat)
    sleep 2
    b=$(awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ")
        busy = y[1] - x[1]; idle = y[2] - x[2]
        if (busy + idle > 0) printf "%.0f", 100 * busy / (busy + idle) }'
}

# ------------------------------------------------------------------ set up --
# A tiny git repo, and one environment file per size. Setup writes SIZE MiB
# into the workspace as 1 MiB files (one stream through split(1): real data
# blocks, not sparse, not fallocated), then prints "setup-done" as its last
# line, which the publication measurement keys on. Maintenance is empty and
# the agent is `true`, so a hit run is nothing but tollgate's own work (plus
# the git fetch and checkout it puts in front of maintenance).
prepare() {
    local size src
    mkdir -p "$T/repo" "$T/state" "$T/tmp" "$T/env" "$T/out" "$T/miss" "$T/trace"
    git -C "$T/repo" init -q -b main
    printf '# cache benchmark\n' >"$T/repo/README.md"
    printf 'data/\n' >"$T/repo/.gitignore"
    if ((REPO_MIB > 0)); then head -c "${REPO_MIB}M" /dev/urandom >"$T/repo/tracked.bin"; fi
    git -C "$T/repo" add -A
    git -C "$T/repo" -c user.name=bench -c user.email=bench@localhost commit -q -m "cache bench"
    [[ $DATA == zero ]] && src=/dev/zero || src=/dev/urandom
    for size in "${SIZES[@]}"; do
        cat >"$T/env/cache-$size.yaml" <<EOF
# written by bench/cache.sh: a ${size} MiB snapshot
version: 1
name: bench-cache-$size
setup: |
  mkdir -p data
  if [ $size -gt 0 ]; then head -c ${size}M $src | split -b 1M -a 5 - data/f; fi
  echo setup-done
env: {HOME: $CACHE_HOME}
internet:
  setup: {mode: off}
  agent: {mode: off}
cache: {ttl: 2h}
EOF
    done
}

check_space() {
    local need=0 size avail
    # each snapshot holds the checkout and its .git; each run a mirror
    for size in "${SIZES[@]}"; do need=$((need + size + 2 * REPO_MIB)); done
    need=$((need + 2 * REPO_MIB + 512))
    avail=$(df -Pm "$T" | awk 'NR == 2 { print $4 }')
    ((avail >= need)) || die "$T has ${avail} MiB free; the snapshots need about ${need} MiB (set TMPDIR to a roomier disk)"
    case $(stat -f -c %T "$T") in
        tmpfs) warn "temp dir $T is on tmpfs: the snapshots live in RAM, not on a disk" ;;
        overlayfs) die "temp dir $T is on overlayfs, which cannot hold overlay upper layers; set TMPDIR" ;;
    esac
}

tg() { TMPDIR=$T/tmp "$TOLLGATE_BIN" --state-dir "$T/state" "$@"; }

declare -a RUN_CMD=()
run_cmd() { # run_cmd SIZE OUT: sets RUN_CMD, the command line of a run of SIZE's environment
    RUN_CMD=("$TOLLGATE_BIN" --state-dir "$T/state" run "$T/env/cache-$1.yaml" --repo "$T/repo" --out "$2" -- true)
}
qw() { printf '%q' "$1"; }   # one word for hyperfine -N, which splits like a shell

json_get() { # json_get FILE KEY -> first "KEY": value (number or string)
    sed -n "s/.*\"$2\": *\"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" "$1" | head -n 1
}
phase_ms() { # phase_ms RESULT.JSON PHASE -> duration_ms of that phase
    awk -v p="\"$2\"" '/"name":/ { cur = $2; sub(/,$/, "", cur) }
        /"duration_ms":/ && cur == p { v = $2; sub(/,$/, "", v); print v; exit }' "$1"
}

# One untimed miss and hit of an environment of its own first: the first
# run after a build (binary, git and the base not in the page cache yet,
# the state dir new) is slower than any later one, whatever its size.
warm_up() {
    local i
    cat >"$T/env/warm-up.yaml" <<EOF
# written by bench/cache.sh: warm-up, not measured
version: 1
name: bench-cache-warm-up
setup: |
  echo setup-done
env: {HOME: $CACHE_HOME}
internet:
  setup: {mode: off}
  agent: {mode: off}
cache: {ttl: 2h}
EOF
    for i in 1 2; do
        tg run "$T/env/warm-up.yaml" --repo "$T/repo" --out "$T/out/warm-up-$i" -- true >"$T/out/warm-up-$i.log" 2>&1 </dev/null \
            || { tail -n 15 "$T/out/warm-up-$i.log" >&2; die "the warm-up run failed (log above)"; }
    done
}

# ------------------------------------------------------------ miss (build) --
# The first run of each environment: a miss, under strace (only rename(2)s
# stop the process, with --seccomp-bpf), with every output line stamped as
# it arrives. Publication is then measured two ways: the duration of the two
# renames that publish the snapshot (setup's upper -> staging/layer, staging
# -> cache/ENV/KEY), and the time from setup's last line ("setup-done") to
# tollgate's "cache: published snapshot" line, which also covers the end of
# the setup phase (proxy, cgroup) and the metadata write and fsyncs.
measure_miss() {
    local size=$1 rc=0 t0 t1 res snap layer
    local out=$T/miss/$size log=$T/miss/$size.log st=$T/miss/$size.strace
    log "miss ($(label "$size")): building the snapshot (setup writes $size MiB from /dev/$DATA)"
    run_cmd "$size" "$out"
    t0=$EPOCHREALTIME
    # -ff: one file per process ($st.PID), so no call is split in two by
    # another process's "<unfinished ...>"
    { TMPDIR=$T/tmp strace -ff "${STRACE_SECCOMP[@]}" -T -o "$st" -e trace=rename,renameat,renameat2 \
        "${RUN_CMD[@]}" 2>&1 </dev/null; } \
        | while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >"$log" || rc=$?
    t1=$EPOCHREALTIME
    res=$out/result.json
    if ((rc != 0)) || [[ ! -f $res ]]; then
        tail -n 15 "$log" >&2
        die "miss run for $(label "$size") failed (status $rc); log above"
    fi
    [[ $(json_get "$res" status) == miss ]] || die "$(label "$size"): first run was not a cache miss ($res)"
    grep -q 'tollgate: cache: published snapshot' "$log" \
        || die "$(label "$size"): the miss run did not publish its snapshot (log: $log)"
    R[miss_wall/$size]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) * 1000 }')
    R[setup_ms/$size]=$(phase_ms "$res" setup)
    R[miss_agent_ms/$size]=$(phase_ms "$res" agent)
    R[miss_rest/$size]=$(awk -v w="${R[miss_wall/$size]}" -v s="${R[setup_ms/$size]}" -v a="${R[miss_agent_ms/$size]}" \
        'BEGIN { printf "%.1f", w - s - a }')
    R[window/$size]=$(awk '/ setup-done$/ && !d { d = $1 } /tollgate: cache: published snapshot/ && d && !p { p = $1 }
        END { if (d && p) printf "%.2f", (p - d) * 1000 }' "$log")
    # rename("A", "B") = 0 <secs>; renameat2(AT_FDCWD, "A", AT_FDCWD, "B", 0) = 0 <secs>
    R[rename_layer/$size]=$(awk -F'"' -v s="$T/state/runs/" '/rename/ && / = 0 </ && index($2, s) == 1 && $2 ~ /\/setup\/upper$/ && $4 ~ /\/snapshot\/layer$/ {
        d = $NF; sub(/.*</, "", d); sub(/>.*/, "", d); printf "%.1f", d * 1e6; exit }' "$st".*)
    R[rename_publish/$size]=$(awk -F'"' -v s="$T/state/runs/" -v c="$T/state/cache/" '/rename/ && / = 0 </ && index($2, s) == 1 && $2 ~ /\/snapshot$/ && index($4, c) == 1 {
        d = $NF; sub(/.*</, "", d); sub(/>.*/, "", d); printf "%.1f", d * 1e6; exit }' "$st".*)
    if [[ -z ${R[rename_layer/$size]} || -z ${R[rename_publish/$size]} ]]; then
        warn "$(label "$size"): strace did not show both publication renames (traces: $st.PID)"
    else
        R[rename_sum/$size]=$(awk -v a="${R[rename_layer/$size]}" -v b="${R[rename_publish/$size]}" 'BEGIN { printf "%.1f", a + b }')
    fi
    snap=$(find "$T/state/cache/bench-cache-$size" -mindepth 1 -maxdepth 1 -type d | head -n 1)
    layer=$snap/layer
    [[ -d $layer ]] || die "$(label "$size"): no snapshot layer under $T/state/cache/bench-cache-$size"
    R[files/$size]=$(find "$layer/workspace" -path '*/data/*' -type f | wc -l)
    R[apparent_mib/$size]=$(du -s --apparent-size -B1M "$layer" | awk '{ print $1 }')
    R[alloc_mib/$size]=$(du -s -B1M "$layer" | awk '{ print $1 }')
    local alloc=${R[alloc_mib/$size]}
    if ((size > 0 && alloc < size)); then
        warn "$(label "$size"): the snapshot holds only ${R[alloc_mib/$size]} MiB of allocated blocks for $size MiB written (sparse or compressed?)"
    fi
    log "  setup ${R[setup_ms/$size]} ms; renames ${R[rename_layer/$size]:-?} + ${R[rename_publish/$size]:-?} µs; setup-done -> published ${R[window/$size]:-?} ms; snapshot ${R[alloc_mib/$size]} MiB on disk"
    # one untimed hit: it must be a hit, or nothing below means anything
    rm -rf "$T/out/check-$size"
    if ! tg run "$T/env/cache-$size.yaml" --repo "$T/repo" --out "$T/out/check-$size" -- true >"$T/out/check-$size.log" 2>&1 </dev/null; then
        tail -n 15 "$T/out/check-$size.log" >&2
        die "$(label "$size"): the first hit run failed (log above)"
    fi
    [[ $(json_get "$T/out/check-$size/result.json" status) == hit ]] \
        || die "$(label "$size"): the second run was not a cache hit ($T/out/check-$size/result.json)"
}

# ------------------------------------------------------------- hyperfine --
# hyperfine -N (no shell). Context first: /bin/true (the floor), bwrap and
# tollgate exec (one sandbox each). Then the hit runs, with --prepare
# removing the run's --out directory before each: in ROUNDS invocations of
# RUNS/ROUNDS runs each, the sizes' order rotated every round, so a drift or
# a burst of load from elsewhere hurts every size alike rather than the last
# one; the statistics are over every timed run of all rounds.
hf_field() { # hf_field CSV NAME COLUMN -> ms
    awk -F, -v n="$2" -v c="$3" 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
        $1 == n && (c in col) && $col[c] != "" { printf "%.2f", $col[c] * 1000 }' "$1"
}

# hf_times NAME JSON... -> every run time (ms) of NAME in hyperfine's JSON exports
hf_times() {
    local name=$1; shift
    awk -v n="$name" '/"command":/ { c = $2; gsub(/[",]/, "", c); next }
        /"times": \[/ { t = (c == n); next }
        t && /\]/ { t = 0; next }
        t { v = $1; sub(/,$/, "", v); printf "%.3f\n", v * 1000 }' "$@"
}

# stats < ms, one a line -> "mean stddev median min max n"
stats() {
    sort -g | awk '{ v[NR] = $1; s += $1 } END {
        if (!NR) exit
        m = s / NR; for (i = 1; i <= NR; i++) q += (v[i] - m) ^ 2
        sd = (NR > 1) ? sqrt(q / (NR - 1)) : 0
        med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%.2f %.2f %.2f %.2f %.2f %d\n", m, sd, med, v[1], v[NR], NR }'
}

measure_hits() {
    local d=$T/hyperfine size name r i n=${#SIZES[@]} per ctx=() hits=() jsons=()
    mkdir -p "$d"
    ctx+=(-n true /bin/true)
    ctx+=(-n bwrap "bwrap --unshare-all --ro-bind / / --dev /dev --proc /proc /bin/true")
    ctx+=(-n exec "$(qw "$TOLLGATE_BIN") --state-dir $(qw "$T/state") exec --policy off -- /bin/true")
    log "hyperfine -N --warmup 5 --runs $CTX_RUNS: /bin/true, bwrap, tollgate exec"
    if ! TMPDIR=$T/tmp hyperfine -N --style basic --warmup 5 --runs "$CTX_RUNS" \
        --export-json "$d/context.json" --export-csv "$d/context.csv" "${ctx[@]}" >"$d/context.txt" 2>&1 </dev/null; then
        tail -n 15 "$d/context.txt" >&2; die "hyperfine (context) failed (log above)"
    fi
    for name in true bwrap exec; do
        for r in mean stddev median min max; do R[$r/$name]=$(hf_field "$d/context.csv" "$name" "$r"); done
        log "  $name: median ${R[median/$name]:-?} ms (mean ${R[mean/$name]:-?} ± ${R[stddev/$name]:-?})"
    done
    per=$(((RUNS + ROUNDS - 1) / ROUNDS))
    for ((r = 0; r < ROUNDS; r++)); do
        hits=()
        for ((i = 0; i < n; i++)); do
            size=${SIZES[$(((i + r) % n))]}
            hits+=(-n "hit-$size" --prepare "rm -rf $(qw "$T/out/hit-$size")"
                "$(qw "$TOLLGATE_BIN") --state-dir $(qw "$T/state") run $(qw "$T/env/cache-$size.yaml") --repo $(qw "$T/repo") --out $(qw "$T/out/hit-$size") -- true")
        done
        log "hit runs, round $((r + 1))/$ROUNDS: hyperfine -N --warmup $WARMUP --runs $per, in the order $(for ((i = 0; i < n; i++)); do printf '%s ' "${SIZES[$(((i + r) % n))]}"; done)MiB"
        if ! TMPDIR=$T/tmp hyperfine -N --style basic --warmup "$WARMUP" --runs "$per" \
            --export-json "$d/hits-$r.json" "${hits[@]}" >"$d/hits-$r.txt" 2>&1 </dev/null; then
            tail -n 15 "$d/hits-$r.txt" >&2; die "hyperfine (hit runs) failed (log above)"
        fi
        jsons+=("$d/hits-$r.json")
        for size in "${SIZES[@]}"; do
            [[ $(json_get "$T/out/hit-$size/result.json" status) == hit ]] \
                || die "$(label "$size"): the timed runs were not cache hits ($T/out/hit-$size/result.json)"
        done
    done
    for size in "${SIZES[@]}"; do
        read -r R[hit_mean/$size] R[hit_stddev/$size] R[hit_median/$size] R[hit_min/$size] R[hit_max/$size] R[hit_n/$size] \
            < <(hf_times "hit-$size" "${jsons[@]}" | stats)
        log "  hit, $(label "$size"): median ${R[hit_median/$size]} ms (mean ${R[hit_mean/$size]} ± ${R[hit_stddev/$size]}, ${R[hit_n/$size]} runs)"
    done
    mkdir -p "$BENCH_DIR/results"
    for ((r = 0; r < ROUNDS; r++)); do cp "$d/hits-$r.json" "$BENCH_DIR/results/cache-hyperfine-round$((r + 1)).json"; done
    cp "$d/context.json" "$BENCH_DIR/results/cache-context-hyperfine.json"
}

# ---------------------------------------------------------------- perf --
# A few hit runs under `perf record` of three scheduler tracepoints (fork,
# exec, exit: no sampling, no ptrace; the kernel stamps each event). From
# them: when each phase's command (the process the sandbox's init forks,
# from its first exec to its exit) ran, and the steps around it.
SEGMENTS=(startup mirror maint_up maint_cmd fetch checkout between agent_cmd agent_down diff finish total commands overhead)
declare -A SEG_LABEL=(
    [startup]="start-up (env, key, lookup)"
    [mirror]="host: git clone --bare (mirror)"
    [maint_up]="maintenance sandbox up"
    [maint_cmd]="maintenance command"
    [fetch]="  of which: git fetch"
    [checkout]="  of which: git checkout"
    [between]="maintenance down + agent up"
    [agent_cmd]="agent command (true)"
    [agent_down]="agent down, diff prep"
    [diff]="diff: git init/import/diff-tree"
    [finish]="exit: run dir removal, result"
    [total]="whole run (traced)"
    [commands]="inside the phases' commands"
    [overhead]="traced run - commands"
)

# perf_segments PERF.DATA -> "segment ms" lines
perf_segments() {
    perf script -i "$1" -F tid,time,event,trace 2>/dev/null | awk '
    function val(key,   m) { if (match($0, " " key "=[^ ]+")) { m = substr($0, RSTART + length(key) + 2, RLENGTH - length(key) - 2); return m } return "" }
    {
        ts = $2; sub(/:$/, "", ts); ts += 0
        if (t0 == "") t0 = ts
        last = ts
        ev = $3
        if (ev == "sched:sched_process_fork:") {
            parent[val("child_pid")] = val("pid")
            # The stage (an exec of /proc/self/exe) forks PID 1, which forks the command.
            if (val("pid") in stage) init[val("child_pid")] = 1
        } else if (ev == "sched:sched_process_exec:") {
            pid = val("pid"); fn = val("filename")
            if (fn == "/proc/self/exe") { stage[pid] = 1; if (first_init == "") first_init = ts }
            else if ((parent[pid] in init) && !(pid in cstart)) { nc++; cpid[nc] = pid; cstart[pid] = ts }
            else if (fn ~ /\/git$/) {
                if (first_init == "") { if (hg0 == "") hg0 = ts; hostgit[pid] = 1 }
                else if (nc == 1 && parent[pid] == cpid[1]) { nm++; mpid[nm] = pid; mstart[pid] = ts }
                else if (nc == 2 && (cpid[2] in cexit)) { if (dg0 == "") dg0 = ts; diffgit[pid] = 1 }
            }
        } else if (ev == "sched:sched_process_exit:") {
            pid = val("pid")
            if (pid in cstart) cexit[pid] = ts
            if (pid in mstart) mexit[pid] = ts
            if (pid in hostgit && ts > hg1) hg1 = ts
            if (pid in diffgit && ts > dg1) dg1 = ts
        }
    }
    function out(name, a, b) { if (a != "" && b != "") printf "%s %.3f\n", name, (b - a) * 1000 }
    END {
        c1 = cpid[1]; c2 = cpid[2]
        out("startup", t0, hg0); out("mirror", hg0, hg1)
        out("maint_up", hg1, cstart[c1]); out("maint_cmd", cstart[c1], cexit[c1])
        out("fetch", mstart[mpid[1]], mexit[mpid[1]]); out("checkout", mstart[mpid[2]], mexit[mpid[2]])
        out("between", cexit[c1], cstart[c2]); out("agent_cmd", cstart[c2], cexit[c2])
        out("agent_down", cexit[c2], dg0); out("diff", dg0, dg1); out("finish", dg1, last)
        out("total", t0, last)
        if (c1 != "" && c2 != "" && (c1 in cexit) && (c2 in cexit)) {
            cmd = (cexit[c1] - cstart[c1]) + (cexit[c2] - cstart[c2])
            printf "commands %.3f\n", cmd * 1000
            printf "overhead %.3f\n", (last - t0 - cmd) * 1000
        }
    }'
}

measure_traces() {
    ((HAVE_PERF == 1)) || return 0
    local size i f seg out
    log "perf: $TRACE_RUNS traced hit runs per size, the sizes in turn"
    for size in "${SIZES[@]}"; do : >"$T/trace/$size.segments"; done
    for ((i = 1; i <= TRACE_RUNS; i++)); do
        for size in "${SIZES[@]}"; do
            f=$T/trace/$size-$i.data
            out=$T/out/trace-$size-$i
            run_cmd "$size" "$out"
            if ! TMPDIR=$T/tmp perf record -q -o "$f" \
                -e sched:sched_process_exec,sched:sched_process_exit,sched:sched_process_fork \
                -- "${RUN_CMD[@]}" >"$out.log" 2>&1 </dev/null; then
                warn "$(label "$size"): traced hit run $i failed (log: $out.log)"
                continue
            fi
            perf_segments "$f" >>"$T/trace/$size.segments"
        done
    done
    for size in "${SIZES[@]}"; do
        for seg in "${SEGMENTS[@]}"; do
            R[seg/$seg/$size]=$(awk -v s="$seg" '$1 == s { print $2 }' "$T/trace/$size.segments" | median)
        done
        if [[ -z ${R[seg/commands/$size]} ]]; then
            warn "$(label "$size"): could not find the phases' commands in the perf traces ($T/trace)"
        fi
        log "  $(label "$size"): commands ${R[seg/commands/$size]:-?} ms, traced run ${R[seg/total/$size]:-?} ms"
    done
}

# One more hit run per size under strace, tracing only unlink(2), unlinkat(2)
# and rmdir(2): how many files a hit run creates and removes again (its run
# directory: the mirror, the phases' upper dirs, the diff's scratch
# repository), and how long the removals take. Git's template files (hook
# samples, description, info/exclude) are counted apart.
measure_removals() {
    local size st out
    for size in "${SIZES[@]}"; do
        st=$T/trace/$size-unlink.strace
        out=$T/out/unlink-$size
        run_cmd "$size" "$out"
        if ! TMPDIR=$T/tmp strace -ff "${STRACE_SECCOMP[@]}" -T -o "$st" -e trace=unlink,unlinkat,rmdir \
            "${RUN_CMD[@]}" >"$out.log" 2>&1 </dev/null; then
            warn "$(label "$size"): the hit run under strace (unlink) failed (log: $out.log)"
            continue
        fi
        read -r R[unlink_n/$size] R[unlink_ms/$size] R[tmpl_n/$size] R[tmpl_ms/$size] < <(awk -F'"' '
            /unlink/ && !/AT_REMOVEDIR/ && / = 0 </ {
                d = $NF; sub(/.*</, "", d); sub(/>.*/, "", d)
                n++; t += d
                name = $2; sub(/.*\//, "", name)
                if (name ~ /\.sample$/ || name == "description" || name == "exclude") { tn++; tt += d }
            }
            END { printf "%d %.1f %d %.1f\n", n, t * 1000, tn, tt * 1000 }' "$st".*)
        log "  $(label "$size"): $((R[unlink_n/$size])) files removed in ${R[unlink_ms/$size]} ms (git template files: ${R[tmpl_n/$size]}, ${R[tmpl_ms/$size]} ms)"
    done
}

# ~/.bashrc of the base, for context: what each phase spends before its
# command proper when HOME is /root (the default without the bench's HOME).
measure_bashrc() {
    [[ $CACHE_HOME != /root && -f /root/.bashrc ]] || return 0
    local d=$T/hyperfine
    if HOME=/root hyperfine -N --style basic --warmup 2 --runs 10 --export-csv "$d/bashrc.csv" \
        -n bashrc "bash -c 'if [ -f ~/.bashrc ]; then . ~/.bashrc; fi'" >"$d/bashrc.txt" 2>&1 </dev/null; then
        R[bashrc]=$(hf_field "$d/bashrc.csv" bashrc median)
    fi
}

# ------------------------------------------------------------------ report --
derive() {
    local size first=${SIZES[0]} small="" big=""
    for size in "${SIZES[@]}"; do
        # overhead: hit wall (hyperfine median) - time inside the commands
        # (perf, median); without perf the whole hit run is the bound
        if [[ -n ${R[seg/commands/$size]:-} ]]; then
            R[overhead/$size]=$(sub_ms "${R[hit_median/$size]:-}" "${R[seg/commands/$size]}")
        else
            R[overhead/$size]=${R[hit_median/$size]:-}
        fi
        # stricter reading: the git fetch + checkout tollgate runs in front
        # of maintenance is tollgate's too; only the agent's time is not
        if [[ -n ${R[seg/agent_cmd/$size]:-} ]]; then
            R[overhead_git/$size]=$(sub_ms "${R[hit_median/$size]:-}" "${R[seg/agent_cmd/$size]}")
        else
            R[overhead_git/$size]=${R[hit_median/$size]:-}
        fi
        R[ratio_first/$size]=$(ratio "${R[hit_median/$size]:-}" "${R[hit_median/$first]:-}")
        R[ratio_exec/$size]=$(ratio "${R[hit_median/$size]:-}" "${R[median/exec]:-}")
        R[ratio_bwrap/$size]=$(ratio "${R[hit_median/$size]:-}" "${R[median/bwrap]:-}")
        if ((size > 0)); then
            R[check/$size]=$(check_max "${R[overhead/$size]}" "$TARGET_MS")
            R[check_git/$size]=$(check_max "${R[overhead_git/$size]}" "$TARGET_MS")
            [[ -z $small ]] && small=$size
            big=$size
        fi
    done
    R[exec_bwrap]=$(ratio "${R[median/exec]:-}" "${R[median/bwrap]:-}")
    # size independence: the largest snapshot against the smallest non-empty one
    if [[ -n $small && $small != "$big" ]]; then
        R[size_pair]="$small $big"
        R[size_ratio]=$(ratio "${R[hit_median/$big]:-}" "${R[hit_median/$small]:-}")
        R[size_check]=$(check_max "${R[size_ratio]}" "$SIZE_RATIO_MAX")
        R[publish_ratio]=$(ratio "${R[window/$big]:-}" "${R[window/$small]:-}")
        R[publish_check]=$(check_max "${R[rename_sum/$big]:-}" "$((PUBLISH_MAX_MS * 1000))")
    fi
}

report() {
    local size seg line tw=44 cw=11 s b
    row() { # row LABEL KEY-PREFIX FORMAT
        line=$(printf "  %-${tw}s" "$1")
        for size in "${SIZES[@]}"; do line+=$(printf "%${cw}s" "$(fnum "$3" "${R[$2/$size]:-}")"); done
        echo "$line"
    }
    echo
    echo "tollgate cache benchmark  $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(nproc) CPUs, kernel $(uname -r), $(stat -f -c %T "$T") at $T"
    echo "hit run: tollgate run ENV --repo REPO --out DIR -- true (maintenance empty, HOME=$CACHE_HOME; repo: $( ((REPO_MIB > 0)) && echo "${REPO_MIB} MiB tracked" || echo "2 small files"))"
    echo "hyperfine -N: $ROUNDS rounds x $(((RUNS + ROUNDS - 1) / ROUNDS)) runs (+$WARMUP warm-up each), sizes in rotated order; CPU busy before: ${R[busy]:-?}%"
    echo
    line=$(printf "  %-${tw}s" "snapshot")
    for size in "${SIZES[@]}"; do line+=$(printf "%${cw}s" "$(label "$size")"); done
    echo "$line"
    row "files written by setup" files "%.0f"
    row "on disk (du, MiB)" alloc_mib "%.0f"
    echo
    echo "  resume (hit run, ms)"
    row "wall, median" hit_median "%.1f"
    line=$(printf "  %-${tw}s" "wall, mean ± stddev")
    for size in "${SIZES[@]}"; do line+=$(printf "%${cw}s" "$(fnum "%.0f" "${R[hit_mean/$size]:-}") ± $(fnum "%.0f" "${R[hit_stddev/$size]:-}")"); done
    echo "$line"
    row "wall, min" hit_min "%.1f"
    row "inside the phases' commands (perf)" seg/commands "%.1f"
    row "RESUME OVERHEAD = wall - commands" overhead "%.1f"
    row "  same, within the traced runs (high)" seg/overhead "%.1f"
    row "  wall - agent only (git counted as ours)" overhead_git "%.1f"
    line=$(printf "  %-${tw}s" "wall / wall($(label "${SIZES[0]}"))")
    for size in "${SIZES[@]}"; do line+=$(printf "%${cw}s" "$(xfmt "${R[ratio_first/$size]:-}")"); done
    echo "$line"
    line=$(printf "  %-${tw}s" "wall / tollgate exec")
    for size in "${SIZES[@]}"; do line+=$(printf "%${cw}s" "$(xfmt "${R[ratio_exec/$size]:-}")"); done
    echo "$line"
    line=$(printf "  %-${tw}s" "wall / bwrap")
    for size in "${SIZES[@]}"; do line+=$(printf "%${cw}s" "$(xfmt "${R[ratio_bwrap/$size]:-}")"); done
    echo "$line"
    if ((HAVE_PERF == 1)); then
        echo
        echo "  where a hit run's time goes (perf sched tracepoints, median of $TRACE_RUNS traced runs, ms)"
        for seg in "${SEGMENTS[@]}"; do
            [[ $seg == commands || $seg == overhead ]] && continue
            row "${SEG_LABEL[$seg]}" "seg/$seg" "%.1f"
        done
    fi
    row "files removed by a hit run (strace)" unlink_n "%.0f"
    row "  their unlink time (ms, under strace)" unlink_ms "%.1f"
    row "  of which git template files" tmpl_n "%.0f"
    row "  their unlink time (ms, under strace)" tmpl_ms "%.1f"
    echo
    echo "  context (hyperfine -N, $CTX_RUNS runs, ms): median"
    printf "  %-${tw}s%${cw}s\n" "/bin/true" "$(fnum "%.2f" "${R[median/true]:-}")"
    printf "  %-${tw}s%${cw}s\n" "bwrap --unshare-all ... /bin/true" "$(fnum "%.2f" "${R[median/bwrap]:-}")"
    printf "  %-${tw}s%${cw}s\n" "tollgate exec --policy off -- /bin/true" "$(fnum "%.2f" "${R[median/exec]:-}")"
    printf "  %-${tw}s%${cw}s\n" "tollgate exec / bwrap" "$(xfmt "${R[exec_bwrap]:-}")"
    if [[ -n ${R[bashrc]:-} ]]; then
        printf "  %-${tw}s%${cw}s\n" "host's /root/.bashrc, read once (not counted)" "$(fnum "%.1f" "${R[bashrc]}")"
    fi
    echo
    echo "  publication (the miss run, under strace -ff ${STRACE_SECCOMP[*]})"
    row "setup phase (result.json, ms)" setup_ms "%.0f"
    row "rename setup/upper -> staging (µs)" rename_layer "%.0f"
    row "rename staging -> cache/ENV/KEY (µs)" rename_publish "%.0f"
    row "setup-done line -> 'published' line (ms)" window "%.1f"
    row "miss wall - setup - agent (ms)" miss_rest "%.1f"
    echo
    echo "targets (issue 6):"
    for size in "${SIZES[@]}"; do
        ((size > 0)) || continue
        printf "  %-52s %9s  %s\n" "resume overhead $(label "$size") < ${TARGET_MS} ms" "$(fnum "%.1f" "${R[overhead/$size]:-}") ms" "${R[check/$size]:-n/a}"
    done
    for size in "${SIZES[@]}"; do
        ((size > 0)) || continue
        printf "  %-52s %9s  %s\n" "  same, git fetch+checkout counted ($(label "$size"))" "$(fnum "%.1f" "${R[overhead_git/$size]:-}") ms" "${R[check_git/$size]:-n/a}"
    done
    if [[ -n ${R[size_pair]:-} ]]; then
        read -r s b <<<"${R[size_pair]}"
        printf "  %-52s %9s  %s\n" "hit wall $(label "$b") / $(label "$s") <= ${SIZE_RATIO_MAX}x (size-independent)" "$(xfmt "${R[size_ratio]:-}")" "${R[size_check]:-n/a}"
        printf "  %-52s %9s  %s\n" "publication renames $(label "$b") <= ${PUBLISH_MAX_MS} ms (a rename)" "$(fnum "%.0f" "${R[rename_sum/$b]:-}") µs" "${R[publish_check]:-n/a}"
        printf "  %-52s %9s\n" "  setup-done -> published, $(label "$b") / $(label "$s")" "$(xfmt "${R[publish_ratio]:-}")"
    fi
    if ((${#NOTES[@]} > 0)); then
        echo
        echo "notes:"
        local n; for n in "${NOTES[@]}"; do echo "  - $n"; done
    fi
    echo
}

json_str() {
    local s=$1
    s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\n'/\\n}; s=${s//$'\t'/\\t}; s=${s//$'\r'/}
    printf '"%s"' "$s"
}
json_num() { if [[ -z $1 ]]; then printf 'null'; else printf '%s' "$1"; fi; }

write_json() {
    local dir=$BENCH_DIR/results f size seg sep first n rev
    mkdir -p "$dir"
    f=$dir/latest-cache.json
    rev=$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo "no commit")
    {
        printf '{\n  "schema": 1,\n  "sections": ["cache"],\n'
        printf '  "date": "%s",\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        printf '  "host": {"cpus": %s, "kernel": %s, "mem_mib": %s, "cpu_busy_pct_before": %s, "filesystem": %s},\n' \
            "$(nproc)" "$(json_str "$(uname -r)")" "$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 }' /proc/meminfo)" \
            "$(json_num "${R[busy]:-}")" "$(json_str "$(stat -f -c %T "$T")")"
        printf '  "versions": {"tollgate": %s, "hyperfine": %s, "bwrap": %s, "strace": %s, "perf": %s},\n' \
            "$(json_str "$rev")" "$(json_str "$(hyperfine --version | awk '{ print $NF }')")" \
            "$(json_str "$(bwrap --version 2>/dev/null | awk '{ print $NF }')")" \
            "$(json_str "$(strace -V 2>/dev/null | awk 'NR == 1 { print $NF }')")" \
            "$(if ((HAVE_PERF == 1)); then json_str "$(perf --version | awk '{ print $NF }')"; else printf null; fi)"
        printf '  "params": {"runs": %s, "rounds": %s, "warmup_per_round": %s, "context_runs": %s, "trace_runs": %s, "data": "%s", "home": %s, "repo_tracked_mib": %s, "unit": "ms"},\n' \
            "$RUNS" "$ROUNDS" "$WARMUP" "$CTX_RUNS" "$TRACE_RUNS" "$DATA" "$(json_str "$CACHE_HOME")" "$REPO_MIB"
        printf '  "context_ms": {"true": %s, "bwrap": %s, "tollgate_exec": %s, "bashrc": %s},\n' \
            "$(json_num "${R[median/true]:-}")" "$(json_num "${R[median/bwrap]:-}")" \
            "$(json_num "${R[median/exec]:-}")" "$(json_num "${R[bashrc]:-}")"
        printf '  "sizes": {'
        sep=""
        for size in "${SIZES[@]}"; do
            printf '%s\n    "%s": {' "$sep" "$size"; sep=","
            printf '"label": %s, "files": %s, "apparent_mib": %s, "allocated_mib": %s,\n' \
                "$(json_str "$(label "$size")")" "$(json_num "${R[files/$size]:-}")" \
                "$(json_num "${R[apparent_mib/$size]:-}")" "$(json_num "${R[alloc_mib/$size]:-}")"
            printf '      "hit": {"median": %s, "mean": %s, "stddev": %s, "min": %s, "max": %s, "commands": %s, "overhead": %s, "overhead_git_counted": %s, "ratio_to_first": %s, "ratio_to_exec": %s, "ratio_to_bwrap": %s, "result": "%s"},\n' \
                "$(json_num "${R[hit_median/$size]:-}")" "$(json_num "${R[hit_mean/$size]:-}")" \
                "$(json_num "${R[hit_stddev/$size]:-}")" "$(json_num "${R[hit_min/$size]:-}")" \
                "$(json_num "${R[hit_max/$size]:-}")" "$(json_num "${R[seg/commands/$size]:-}")" \
                "$(json_num "${R[overhead/$size]:-}")" "$(json_num "${R[overhead_git/$size]:-}")" \
                "$(json_num "${R[ratio_first/$size]:-}")" "$(json_num "${R[ratio_exec/$size]:-}")" \
                "$(json_num "${R[ratio_bwrap/$size]:-}")" "${R[check/$size]:-n/a}"
            printf '      "breakdown": {'
            first=1
            for seg in "${SEGMENTS[@]}"; do
                ((first)) || printf ', '; first=0
                printf '"%s": %s' "$seg" "$(json_num "${R[seg/$seg/$size]:-}")"
            done
            printf '},\n'
            printf '      "hit_removals": {"files": %s, "unlink_ms_strace": %s, "git_template_files": %s, "git_template_unlink_ms_strace": %s},\n' \
                "$(json_num "${R[unlink_n/$size]:-}")" "$(json_num "${R[unlink_ms/$size]:-}")" \
                "$(json_num "${R[tmpl_n/$size]:-}")" "$(json_num "${R[tmpl_ms/$size]:-}")"
            printf '      "miss": {"wall": %s, "setup": %s, "agent": %s, "rest": %s, "setup_done_to_published": %s, "rename_layer_us": %s, "rename_publish_us": %s}}' \
                "$(json_num "${R[miss_wall/$size]:-}")" "$(json_num "${R[setup_ms/$size]:-}")" \
                "$(json_num "${R[miss_agent_ms/$size]:-}")" "$(json_num "${R[miss_rest/$size]:-}")" \
                "$(json_num "${R[window/$size]:-}")" "$(json_num "${R[rename_layer/$size]:-}")" \
                "$(json_num "${R[rename_publish/$size]:-}")"
        done
        printf '\n  },\n  "targets": ['
        sep=""
        for size in "${SIZES[@]}"; do
            ((size > 0)) || continue
            printf '%s\n    {"name": "resume overhead %s < %s ms", "value": %s, "max": %s, "result": "%s"}' "$sep" \
                "$(label "$size")" "$TARGET_MS" "$(json_num "${R[overhead/$size]:-}")" "$TARGET_MS" "${R[check/$size]:-n/a}"
            sep=","
        done
        if [[ -n ${R[size_pair]:-} ]]; then
            printf '%s\n    {"name": "hit wall largest / smallest", "ratio": %s, "max": %s, "result": "%s"}' "$sep" \
                "$(json_num "${R[size_ratio]:-}")" "$SIZE_RATIO_MAX" "${R[size_check]:-n/a}"
            printf ',\n    {"name": "publication renames, largest snapshot (us)", "value": %s, "max": %s, "result": "%s"}' \
                "$(json_num "${R[rename_sum/${R[size_pair]##* }]:-}")" "$((PUBLISH_MAX_MS * 1000))" "${R[publish_check]:-n/a}"
        fi
        printf '\n  ],\n  "notes": ['
        first=1
        for n in "${NOTES[@]}"; do ((first)) || printf ', '; first=0; json_str "$n"; done
        printf ']\n}\n'
    } >"$f.tmp"
    mv "$f.tmp" "$f"
    cp "$f" "$dir/$(date -u +%Y%m%dT%H%M%SZ)-cache.json"
    log "wrote $f"
}

# -------------------------------------------------------------------- main --
main() {
    local size left t0
    [[ $EUID == 0 ]] || die "needs root (tollgate run does)"
    T=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-bench-cache.XXXXXX")
    chmod 0755 "$T"
    log "temp dir $T"
    install_tools
    build_tollgate
    [[ -x $TOLLGATE_BIN ]] || die "no binary at $TOLLGATE_BIN"
    check_space
    prepare
    warm_up
    for size in "${SIZES[@]}"; do measure_miss "$size"; done
    # the snapshots' data is still being written back: let it land first,
    # so the writeback does not run under the timed hit runs
    t0=$EPOCHREALTIME
    sync
    log "sync after building the snapshots: $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s"
    R[busy]=$(cpu_busy_pct)
    log "CPU busy before measuring: ${R[busy]:-?}% of $(nproc) CPUs"
    if [[ -n ${R[busy]} ]] && ((R[busy] > 20)); then
        warn "other work kept the CPUs ${R[busy]}% busy just before measuring; the times are unreliable, rerun on a quiet machine"
    fi
    measure_hits
    measure_traces
    measure_removals
    measure_bashrc
    left=$(find "$T/tmp" -mindepth 1 -maxdepth 1 -name 'tollgate-run-*' | wc -l)
    ((left == 0)) || warn "$left tollgate run directories were left in $T/tmp"
    left=$(find "$T/state/runs" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    ((left == 0)) || warn "$left run directories were left in $T/state/runs"
    derive
    report
    write_json
}

main "$@"
