#!/usr/bin/env bash
# tollgate benchmark: tollgate vs squid vs tinyproxy vs a direct connection,
# all against ONE local nginx upstream, in ONE run. See bench/README.md.
#
#   bash bench/run.sh                      # as root on Debian 12
#   BENCH_LARGE_MB=256 BENCH_SECONDS=5 bash bench/run.sh   # quick run
#
# Every address used here is 127.0.0.1 (or "localhost"); nothing leaves the
# machine. Sections are functions; to add one (TLS interception rate, sandbox
# start-up vs bubblewrap, cache resume, ...), write a function that fills
# RES[metric/target] for metrics declared with def_metric, and call it from
# main().
set -euo pipefail

# ---------------------------------------------------------------- settings --
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)

LARGE_MB=${BENCH_LARGE_MB:-1024}         # size of /large, MiB
REPEAT=${BENCH_REPEAT:-3}                # curl downloads per target, best kept
DURATION=${BENCH_SECONDS:-10}            # wrk seconds per target
WARMUP=${BENCH_WARMUP:-1}                # wrk warm-up seconds (discarded), 0 = none
WRK_THREADS=${BENCH_WRK_THREADS:-2}
WRK_CONNS=${BENCH_WRK_CONNS:-64}
SKIP_BUILD=${BENCH_SKIP_BUILD:-0}        # 1 = use the existing binary
TOLLGATE_BIN=${BENCH_TOLLGATE_BIN:-$REPO/target/release/tollgate}
KEEP_TMP=${BENCH_KEEP_TMP:-0}            # 1 = keep the temp dir (configs, logs)
SMALL_BYTES=512

HOST=127.0.0.1
UP_HTTP=18080
UP_TLS=18443
declare -A PORT=([tollgate]=13128 [squid]=13129 [tinyproxy]=13130)
read -r -a TARGETS <<<"${BENCH_TARGETS:-direct tollgate squid tinyproxy}"

for v in LARGE_MB REPEAT DURATION WARMUP WRK_THREADS WRK_CONNS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "bench: $v must be a whole number, got '${!v}'" >&2; exit 2; }
done
((LARGE_MB > 0 && REPEAT > 0 && DURATION > 0)) || { echo "bench: sizes/counts must be > 0" >&2; exit 2; }

# Never use an ambient proxy. Note: no_proxy is unset rather than set, because
# curl applies no_proxy even to an explicit --proxy, which would silently turn
# every proxied measurement into a direct one. Instead every curl call says
# --noproxy explicitly (see curl_get).
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY \
      ftp_proxy FTP_PROXY no_proxy NO_PROXY
export LC_ALL=C

# ------------------------------------------------------------------- state --
T=""                     # temp dir
declare -a ALL_PIDS=()   # every background process we started
declare -A PID=()        # server name -> pid
declare -A DOWN=()       # target -> why it has no numbers
declare -A RES=()        # "metric/target" -> number ("" = failed / n/a)
declare -a NOTES=()
declare -a METRICS=()
declare -A MLABEL=() MFMT=() MTABLE=()

# def_metric KEY LABEL PRINTF-FORMAT IN-TABLE(1|0)
def_metric() { METRICS+=("$1"); MLABEL[$1]=$2; MFMT[$1]=$3; MTABLE[$1]=$4; }

def_metric plain_http_mbps  "plain HTTP GET /large (MB/s)"  "%.1f" 1
def_metric connect_mbps     "CONNECT+TLS GET /large (MB/s)" "%.1f" 1
def_metric small_rps        "small GETs, keep-alive (req/s)" "%.0f" 1
def_metric rss_hwm_mib      "peak RSS, VmHWM (MiB)"         "%.1f" 1
def_metric rss_idle_mib     "RSS at start (MiB)"            "%.1f" 0
def_metric small_p50_ms     "small GET latency p50 (ms)"    "%.3f" 0
def_metric small_p99_ms     "small GET latency p99 (ms)"    "%.3f" 0
def_metric small_sock_errs  "wrk socket errors"             "%.0f" 0

log()  { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
warn() { printf '[bench %s] WARNING: %s\n' "$(date +%H:%M:%S)" "$*" >&2; NOTES+=("$*"); }
die()  { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
is_proxy() { [[ $1 != direct ]]; }
selected() { local t; for t in "${TARGETS[@]}"; do [[ $t == "$1" ]] && return 0; done; return 1; }
up() { selected "$1" && [[ -z ${DOWN[$1]:-} ]]; }
mark_down() { DOWN[$1]=$2; log "NOT MEASURED: $1: $2"; }

cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    for pid in "${ALL_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${ALL_PIDS[@]}"; do
        for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n $T && -d $T ]]; then
        if [[ $KEEP_TMP == 1 ]]; then log "kept temp dir $T"; else rm -rf "$T"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# spawn NAME LOGFILE CMD...: start CMD in the background, remember its pid.
spawn() {
    local name=$1 logf=$2; shift 2
    "$@" >"$logf" 2>&1 &
    PID[$name]=$!
    ALL_PIDS+=("$!")
}

port_open() { (: <>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# wait_port NAME PORT: wait up to ~10 s for PORT to accept connections while
# the process NAME is alive. Returns 1 (with the reason in WAIT_ERR) if not.
WAIT_ERR=""
wait_port() {
    local name=$1 port=$2 i
    for ((i = 0; i < 100; i++)); do
        if ! kill -0 "${PID[$name]}" 2>/dev/null; then
            local rc=0; wait "${PID[$name]}" 2>/dev/null || rc=$?
            WAIT_ERR="$name exited (status $rc) before listening on $HOST:$port"
            return 1
        fi
        port_open "$port" && return 0
        sleep 0.1
    done
    WAIT_ERR="$name did not listen on $HOST:$port within 10 s"
    return 1
}

log_tail() {
    if [[ -s $1 ]]; then { echo "----- last lines of $1 -----"; tail -n 15 "$1"; echo "-----"; } >&2; fi
}

# ------------------------------------------------------------ install_peers --
install_peers() {
    # command -> Debian package(s), first one that exists wins
    local -A want=([nginx]="nginx-light nginx" [squid]=squid [tinyproxy]=tinyproxy
                   [wrk]=wrk [openssl]=openssl [curl]=curl [bwrap]=bubblewrap
                   [hyperfine]=hyperfine [fallocate]=util-linux)
    local cmd pkg cand missing=() fresh=()
    for cmd in nginx squid tinyproxy wrk openssl curl bwrap hyperfine fallocate; do
        # squid/nginx/tinyproxy live in /usr/sbin, which a non-root PATH may lack
        have "$cmd" || [[ -x /usr/sbin/$cmd ]] || missing+=("$cmd")
    done
    export PATH="$PATH:/usr/sbin:/sbin"
    if ((${#missing[@]} == 0)); then log "peers and tools already installed"; return; fi
    [[ $EUID == 0 ]] || die "missing: ${missing[*]}; run as root, or install them (apt-get install nginx-light squid tinyproxy wrk openssl curl bubblewrap hyperfine)"
    have apt-get || die "missing: ${missing[*]} and no apt-get; this script targets Debian 12"
    log "installing from Debian: missing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    local pkgs=()
    for cmd in "${missing[@]}"; do
        pkg=""
        for cand in ${want[$cmd]}; do
            if apt-cache show "$cand" >/dev/null 2>&1; then pkg=$cand; break; fi
        done
        [[ -n $pkg ]] || die "no Debian package found for $cmd (${want[$cmd]})"
        pkgs+=("$pkg")
        [[ $cmd == nginx || $cmd == squid || $cmd == tinyproxy ]] && fresh+=("$cmd")
    done
    apt-get install -y -q "${pkgs[@]}" >&2
    # The packages may start their own services. We use our own ports and
    # configs, but stop the ones this run just installed so they don't compete
    # for CPU. Services installed before this run are left alone.
    local svc
    for svc in "${fresh[@]}"; do
        if [[ -d /run/systemd/system ]] && have systemctl; then
            systemctl stop "$svc" >/dev/null 2>&1 || true
        elif have service; then
            service "$svc" stop >/dev/null 2>&1 || true
        fi
    done
}

# ------------------------------------------------------------ build_tollgate --
build_tollgate() {
    selected tollgate || return 0
    if [[ $SKIP_BUILD == 1 ]]; then log "BENCH_SKIP_BUILD=1: using $TOLLGATE_BIN as is"; return; fi
    [[ -d $HOME/.cargo/bin ]] && export PATH="$PATH:$HOME/.cargo/bin"
    if ! have cargo; then
        mark_down tollgate "cargo not found (install Rust >= 1.80, e.g. with rustup), cannot build"
        return
    fi
    log "building tollgate: cargo build --release (log: $T/cargo-build.log)"
    if ! (cd "$REPO" && cargo build --release) >"$T/cargo-build.log" 2>&1; then
        log_tail "$T/cargo-build.log"
        mark_down tollgate "cargo build --release failed (run it in $REPO to see why)"
    fi
}

# ------------------------------------------------------------ start_upstream --
start_upstream() {
    local d=$T/nginx
    mkdir -p "$d/www" "$d/tmp"
    chmod 0755 "$d" "$d/www"
    log "upstream: making ${LARGE_MB} MiB /large and ${SMALL_BYTES} B /small"
    fallocate -l "${LARGE_MB}MiB" "$d/www/large" 2>/dev/null || truncate -s "${LARGE_MB}M" "$d/www/large"
    head -c "$SMALL_BYTES" /dev/zero | tr '\0' 'x' >"$d/www/small"
    chmod 0644 "$d/www/large" "$d/www/small"
    LARGE_BYTES=$(stat -c %s "$d/www/large")

    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -days 2 -subj "/CN=$HOST" -addext "subjectAltName=IP:$HOST,DNS:localhost" \
        -keyout "$d/key.pem" -out "$d/cert.pem" >/dev/null 2>&1 \
        || die "openssl could not make the self-signed certificate"
    CA_CERT=$d/cert.pem

    cat >"$d/nginx.conf" <<EOF
worker_processes auto;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    server {
        listen $HOST:$UP_HTTP;
        root $d/www;
    }
    server {
        listen $HOST:$UP_TLS ssl;
        ssl_certificate $d/cert.pem;
        ssl_certificate_key $d/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:1m;
        root $d/www;
    }
}
EOF
    local p
    for p in "$UP_HTTP" "$UP_TLS"; do
        ! port_open "$p" || die "port $HOST:$p is already in use; stop whatever listens there"
    done
    nginx -t -q -p "$d" -e "$d/error.log" -c "$d/nginx.conf" || die "nginx rejected $d/nginx.conf"
    spawn nginx "$d/stdout.log" nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;'
    if ! wait_port nginx "$UP_HTTP" || ! wait_port nginx "$UP_TLS"; then
        log_tail "$d/error.log"
        die "upstream: $WAIT_ERR"
    fi
    log "upstream: nginx on http://$HOST:$UP_HTTP and https://$HOST:$UP_TLS (pid ${PID[nginx]})"
}

# proxy_started NAME LOGFILE: wait for the proxy's port; on failure mark it down.
proxy_started() {
    local name=$1 logf=$2
    if wait_port "$name" "${PORT[$name]}"; then
        RES[rss_idle_mib/$name]=$(rss_mib "${PID[$name]}" VmRSS)
        log "$name: listening on $HOST:${PORT[$name]} (pid ${PID[$name]})"
    else
        log_tail "$logf"
        mark_down "$name" "failed to start: $WAIT_ERR (log above)"
    fi
}

# proxy_port_free NAME: refuse to benchmark whatever else holds the port
proxy_port_free() {
    ! port_open "${PORT[$1]}" && return 0
    mark_down "$1" "port $HOST:${PORT[$1]} is already in use by another process"
    return 1
}

# ------------------------------------------------------------ start_tollgate --
start_tollgate() {
    up tollgate || return 0
    proxy_port_free tollgate || return 0
    if [[ ! -x $TOLLGATE_BIN ]]; then mark_down tollgate "no binary at $TOLLGATE_BIN"; return; fi
    log "tollgate: starting $TOLLGATE_BIN proxy"
    spawn tollgate "$T/tollgate.log" "$TOLLGATE_BIN" proxy \
        --policy "$BENCH_DIR/tollgate-policy.yaml" \
        --listen "$HOST:${PORT[tollgate]}" \
        --audit-log "$T/tollgate-audit.jsonl"
    proxy_started tollgate "$T/tollgate.log"
}

# --------------------------------------------------------------- start_squid --
start_squid() {
    up squid || return 0
    proxy_port_free squid || return 0
    local d=$T/squid
    mkdir -p "$d"
    # As root squid switches to cache_effective_user (Debian: proxy) and then
    # has to write its logs and pid file here.
    [[ $EUID == 0 ]] && chown proxy: "$d"
    cat >"$d/squid.conf" <<EOF
http_port $HOST:${PORT[squid]}
workers 1
acl SSL_ports port $UP_TLS
acl Safe_ports port $UP_HTTP $UP_TLS
acl CONNECT method CONNECT
http_access deny !Safe_ports
http_access deny CONNECT !SSL_ports
http_access allow localhost
http_access deny all
cache deny all
cache_mem 0 MB
access_log stdio:$d/access.log
cache_log $d/cache.log
cache_store_log none
pid_filename $d/squid.pid
coredump_dir $d
netdb_filename none
icp_port 0
htcp_port 0
shutdown_lifetime 0 seconds
EOF
    if ! squid -k parse -f "$d/squid.conf" >"$d/parse.log" 2>&1; then
        log_tail "$d/parse.log"
        mark_down squid "squid rejected $d/squid.conf (log above)"
        return
    fi
    log "squid: starting"
    spawn squid "$d/stdout.log" squid -N -f "$d/squid.conf"
    proxy_started squid "$d/cache.log"
}

# ----------------------------------------------------------- start_tinyproxy --
start_tinyproxy() {
    up tinyproxy || return 0
    proxy_port_free tinyproxy || return 0
    local d=$T/tinyproxy user=""
    mkdir -p "$d"
    if [[ $EUID == 0 ]]; then
        # as root tinyproxy drops to User/Group, which must own its log dir
        chown tinyproxy:tinyproxy "$d"
        user=$'User tinyproxy\nGroup tinyproxy'
    fi
    cat >"$d/tinyproxy.conf" <<EOF
$user
Port ${PORT[tinyproxy]}
Listen $HOST
Timeout 600
Allow $HOST
ConnectPort $UP_TLS
MaxClients 200
LogFile "$d/tinyproxy.log"
LogLevel Warning
PidFile "$d/tinyproxy.pid"
EOF
    log "tinyproxy: starting"
    spawn tinyproxy "$d/stdout.log" tinyproxy -d -c "$d/tinyproxy.conf"
    proxy_started tinyproxy "$d/tinyproxy.log"
}

# ---------------------------------------------------------------- helpers --
# curl_get TARGET URL: one GET, direct or through TARGET's proxy; prints
# "http_code size_download speed_download" (speed in bytes/s).
curl_get() {
    local target=$1 url=$2 via=()
    if is_proxy "$target"; then
        via=(--noproxy '' --proxy "http://$HOST:${PORT[$target]}")
    else
        via=(--noproxy '*')
    fi
    # -q first: ignore any ~/.curlrc
    curl -q -s -o /dev/null --max-time 600 --cacert "$CA_CERT" "${via[@]}" \
        -w '%{http_code} %{size_download} %{speed_download}\n' "$url" || true
}

rss_mib() { # rss_mib PID FIELD -> MiB, or "" if the process is gone
    awk -v f="$2:" '$1 == f { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || true
}

fnum() { # fnum FORMAT VALUE -> formatted, or "n/a"
    if [[ -z $2 ]]; then echo "n/a"; else awk -v f="$1" -v x="$2" 'BEGIN { printf f, x }'; fi
}

ratio() { # ratio A B -> A/B with 2 decimals, or ""
    [[ -n $1 && -n $2 ]] || return 0
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b }'
}

# ------------------------------------------------------------ smoke_test --
# One small GET per target, plain and CONNECT, checked for status and size,
# so that a proxy answering 403 fast can never show up as "fast".
smoke_test() {
    local t out scheme url
    for t in "${TARGETS[@]}"; do
        up "$t" || continue
        for scheme in http https; do
            [[ $scheme == http ]] && url="http://$HOST:$UP_HTTP/small" || url="https://$HOST:$UP_TLS/small"
            out=$(curl_get "$t" "$url")
            read -r code size _ <<<"$out"
            if [[ ${code:-} != 200 || ${size:-} != "$SMALL_BYTES" ]]; then
                mark_down "$t" "smoke test GET $url failed (HTTP ${code:-none}, ${size:-0} bytes)"
                break
            fi
        done
    done
}

# ------------------------------------------------------- measure_throughput --
# measure_throughput METRIC URL: best of REPEAT downloads of URL per target.
# Rounds go over all targets in turn, so a burst of load from elsewhere on
# the machine hurts every column alike rather than one of them.
measure_throughput() {
    local metric=$1 url=$2 t i out code size speed
    local -A best=() failed=()
    log "measuring ${MLABEL[$metric]}: $url, best of $REPEAT"
    for ((i = 1; i <= REPEAT; i++)); do
        for t in "${TARGETS[@]}"; do
            if ! up "$t" || [[ -n ${failed[$t]:-} ]]; then continue; fi
            out=$(curl_get "$t" "$url")
            read -r code size speed <<<"$out"
            if [[ ${code:-} != 200 || ${size:-} != "$LARGE_BYTES" ]]; then
                warn "$t: ${MLABEL[$metric]}: run $i got HTTP ${code:-none} and ${size:-0} of $LARGE_BYTES bytes; no number reported"
                failed[$t]=1
                continue
            fi
            best[$t]=$(awk -v a="${best[$t]:-0}" -v b="$speed" 'BEGIN { print (b > a ? b : a) }')
        done
    done
    for t in "${TARGETS[@]}"; do
        up "$t" || continue
        if [[ -n ${failed[$t]:-} ]]; then
            RES[$metric/$t]=""
        else
            RES[$metric/$t]=$(awk -v b="${best[$t]}" 'BEGIN { printf "%.1f", b / 1e6 }')
        fi
        log "  $t: $(fnum "${MFMT[$metric]}" "${RES[$metric/$t]}") MB/s"
    done
}

# to_ms "1.23ms" -> 1.23 ; wrk prints us, ms, s (and m, h for absurd values)
to_ms() {
    awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        m = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : (u == "m") ? 60000 : (u == "h") ? 3600000 : -1
        if (m > 0) printf "%.3f", n * m }'
}

# ------------------------------------------------------------ measure_rate --
# Small requests on kept-alive connections. Through a proxy the request line
# is absolute-form (GET http://127.0.0.1:18080/small HTTP/1.1), as a client
# configured with http_proxy sends it.
measure_rate() {
    local t out url script total non2xx sockerr
    cat >"$T/absolute-form.lua" <<EOF
wrk.path = "http://$HOST:$UP_HTTP/small"
wrk.headers["Host"] = "$HOST:$UP_HTTP"
EOF
    log "measuring ${MLABEL[small_rps]}: wrk -t$WRK_THREADS -c$WRK_CONNS -d${DURATION}s"
    for t in "${TARGETS[@]}"; do
        up "$t" || continue
        if is_proxy "$t"; then
            url="http://$HOST:${PORT[$t]}/"; script=(-s "$T/absolute-form.lua")
        else
            url="http://$HOST:$UP_HTTP/small"; script=()
        fi
        if ((WARMUP > 0)); then
            wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${WARMUP}s" "${script[@]}" "$url" >/dev/null 2>&1 || true
        fi
        out=$(wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${DURATION}s" --latency "${script[@]}" "$url" 2>&1) || true
        printf '%s\n' "$out" >"$T/wrk-$t.txt"
        total=$(awk '/ requests in / { print $1 }' <<<"$out")
        non2xx=$(awk -F: '/Non-2xx or 3xx responses/ { gsub(/ /, "", $2); print $2 }' <<<"$out")
        sockerr=$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' <<<"$out")
        RES[small_sock_errs/$t]=${sockerr:-0}
        if [[ -z $total || $total == 0 ]]; then
            warn "$t: wrk completed no requests; no number reported (output in $T/wrk-$t.txt)"
            RES[small_rps/$t]=""
            continue
        fi
        if [[ -n $non2xx ]] && awk -v n="$non2xx" -v t="$total" 'BEGIN { exit !(n * 1000 > t) }'; then
            warn "$t: $non2xx of $total small requests were not 2xx/3xx; no number reported"
            RES[small_rps/$t]=""
            continue
        fi
        [[ -n $non2xx ]] && warn "$t: $non2xx of $total small requests were not 2xx/3xx (< 0.1%, rate kept)"
        if [[ ${sockerr:-0} != 0 ]]; then
            if awk -v e="$sockerr" -v t="$total" 'BEGIN { exit !(e * 10 >= t * 9) }'; then
                warn "$t: closed the client connection after (nearly) every response ($sockerr wrk socket errors for $total requests), so its small-request rate includes a TCP connect per request"
            else
                warn "$t: wrk saw $sockerr socket errors (connect/read/write/timeout) in $total small requests"
            fi
        fi
        RES[small_rps/$t]=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
        RES[small_p50_ms/$t]=$(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")
        RES[small_p99_ms/$t]=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
        log "  $t: ${RES[small_rps/$t]} req/s (p99 ${RES[small_p99_ms/$t]:-?} ms)"
    done
}

# ------------------------------------------------------------- measure_rss --
measure_rss() {
    local t v
    for t in "${TARGETS[@]}"; do
        if ! is_proxy "$t" || ! up "$t"; then continue; fi
        v=$(rss_mib "${PID[$t]}" VmHWM)
        [[ -n $v ]] || warn "$t: process ${PID[$t]} is gone; no memory number"
        RES[rss_hwm_mib/$t]=$v
    done
}

# busy_check: before measuring, sample how busy the CPUs are for 2 s (all our
# servers are idle then); note it when other work competes with the benchmark.
BUSY_PCT=""
busy_check() {
    local a b
    a=$(awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat)
    sleep 2
    b=$(awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat)
    BUSY_PCT=$(awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ")
        busy = y[1] - x[1]; idle = y[2] - x[2]
        if (busy + idle > 0) printf "%.0f", 100 * busy / (busy + idle) }')
    log "CPU busy before measuring: ${BUSY_PCT:-?}% of $(nproc) CPUs"
    if [[ -n $BUSY_PCT ]] && ((BUSY_PCT > 20)); then
        warn "other work kept the CPUs ${BUSY_PCT}% busy just before measuring; numbers are unreliable, rerun on a quiet machine"
    fi
}

# ------------------------------------------------------------------ report --
json_str() {
    local s=$1
    s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\n'/\\n}; s=${s//$'\t'/\\t}; s=${s//$'\r'/}
    printf '"%s"' "$s"
}
json_num() { if [[ -z $1 ]]; then printf 'null'; else printf '%s' "$1"; fi; }

xfmt() { if [[ -n $1 ]]; then echo "${1}x"; else echo "n/a"; fi; }

# check NAME VALUE MIN -> "PASS"/"FAIL"/"n/a"
check() { [[ -z $2 ]] && echo "n/a" && return; awk -v v="$2" -v m="$3" 'BEGIN { print (v >= m ? "PASS" : "FAIL") }'; }

report() {
    local m t line v tg_sq tg_tp c1 c2 c3 r1 r2 r3
    local tw=34 cw=11
    echo
    echo "tollgate benchmark  $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(nproc) CPUs, kernel $(uname -r)"
    echo "upstream nginx 127.0.0.1 (/large ${LARGE_MB} MiB, /small ${SMALL_BYTES} B); curl best of $REPEAT; wrk -t$WRK_THREADS -c$WRK_CONNS -d${DURATION}s"
    echo
    line=$(printf "%-${tw}s" "")
    for t in "${TARGETS[@]}"; do line+=$(printf "%${cw}s" "$t"); done
    echo "$line"
    for m in "${METRICS[@]}"; do
        [[ ${MTABLE[$m]} == 1 ]] || continue
        line=$(printf "%-${tw}s" "${MLABEL[$m]}")
        for t in "${TARGETS[@]}"; do
            if [[ $m == rss_* && $t == direct ]]; then v="-"; else v=$(fnum "${MFMT[$m]}" "${RES[$m/$t]:-}"); fi
            line+=$(printf "%${cw}s" "$v")
        done
        echo "$line"
    done
    echo
    line=$(printf "%-${tw}s" "ratio to direct")
    for t in "${TARGETS[@]}"; do is_proxy "$t" && line+=$(printf "%${cw}s" "$t"); done
    echo "$line"
    for m in plain_http_mbps connect_mbps small_rps; do
        line=$(printf "%-${tw}s" "${MLABEL[$m]}")
        for t in "${TARGETS[@]}"; do
            is_proxy "$t" || continue
            v=$(ratio "${RES[$m/$t]:-}" "${RES[$m/direct]:-}")
            line+=$(printf "%${cw}s" "$(xfmt "$v")")
        done
        echo "$line"
    done
    echo
    printf "%-${tw}s%${cw}s%${cw}s\n" "tollgate relative to peers" "/squid" "/tinyproxy"
    for m in plain_http_mbps connect_mbps small_rps rss_hwm_mib; do
        tg_sq=$(ratio "${RES[$m/tollgate]:-}" "${RES[$m/squid]:-}")
        tg_tp=$(ratio "${RES[$m/tollgate]:-}" "${RES[$m/tinyproxy]:-}")
        printf "%-${tw}s%${cw}s%${cw}s\n" "${MLABEL[$m]}" "$(xfmt "$tg_sq")" "$(xfmt "$tg_tp")"
    done
    r1=$(ratio "${RES[connect_mbps/tollgate]:-}" "${RES[connect_mbps/direct]:-}")
    r2=$(ratio "${RES[plain_http_mbps/tollgate]:-}" "${RES[plain_http_mbps/squid]:-}")
    r3=$(ratio "${RES[small_rps/tollgate]:-}" "${RES[small_rps/squid]:-}")
    c1=$(check x "$r1" 0.9); c2=$(check x "$r2" 1.5); c3=$(check x "$r3" 2)
    echo
    echo "targets (tollgate):"
    printf "  %-36s %8s  %s\n" "CONNECT      >= 0.9x direct" "$(xfmt "$r1")" "$c1"
    printf "  %-36s %8s  %s\n" "plain HTTP   >= 1.5x squid" "$(xfmt "$r2")" "$c2"
    printf "  %-36s %8s  %s\n" "small req/s  >= 2x squid" "$(xfmt "$r3")" "$c3"
    if ((${#DOWN[@]} > 0)); then
        echo
        echo "not measured:"
        for t in "${TARGETS[@]}"; do [[ -n ${DOWN[$t]:-} ]] && echo "  $t: ${DOWN[$t]}"; done
    fi
    if ((${#NOTES[@]} > 0)); then
        echo
        echo "notes:"
        local n; for n in "${NOTES[@]}"; do echo "  - $n"; done
    fi
    echo

    write_json "$r1" "$r2" "$r3" "$c1" "$c2" "$c3"
}

write_json() {
    local dir=$BENCH_DIR/results f first m t sep n rev
    mkdir -p "$dir"
    f=$dir/latest.json
    rev=$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo "no commit")
    {
        printf '{\n  "schema": 1,\n'
        printf '  "date": "%s",\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        printf '  "host": {"cpus": %s, "kernel": %s, "mem_mib": %s, "cpu_busy_pct_before": %s},\n' \
            "$(nproc)" "$(json_str "$(uname -r)")" "$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 }' /proc/meminfo)" \
            "$(json_num "$BUSY_PCT")"
        printf '  "params": {"large_mib": %s, "small_bytes": %s, "repeat": %s, "seconds": %s, "warmup_seconds": %s, "wrk_threads": %s, "wrk_connections": %s},\n' \
            "$LARGE_MB" "$SMALL_BYTES" "$REPEAT" "$DURATION" "$WARMUP" "$WRK_THREADS" "$WRK_CONNS"
        printf '  "versions": {"tollgate": %s, "nginx": %s, "squid": %s, "tinyproxy": %s, "curl": %s, "wrk": %s},\n' \
            "$(json_str "$rev")" \
            "$(json_str "$(nginx -v 2>&1 | sed 's/^nginx version: //')")" \
            "$(json_str "$(squid -v 2>/dev/null | awk 'NR == 1 { print $NF }')")" \
            "$(json_str "$(tinyproxy -v 2>&1 | awk '{ print $NF }')")" \
            "$(json_str "$(curl -q --version | awk 'NR == 1 { print $2 }')")" \
            "$(json_str "$(wrk -v 2>&1 | awk 'NR == 1 { print $2 }')")"
        printf '  "ports": {"upstream_http": %s, "upstream_tls": %s' "$UP_HTTP" "$UP_TLS"
        for t in tollgate squid tinyproxy; do printf ', "%s": %s' "$t" "${PORT[$t]}"; done
        printf '},\n  "available": {'
        first=1
        for t in "${TARGETS[@]}"; do
            ((first)) || printf ', '; first=0
            if [[ -n ${DOWN[$t]:-} ]]; then printf '"%s": %s' "$t" "$(json_str "${DOWN[$t]}")"; else printf '"%s": true' "$t"; fi
        done
        printf '},\n  "results": {\n'
        sep=""
        for m in "${METRICS[@]}"; do
            printf '%s    "%s": {' "$sep" "$m"; sep=$',\n'
            first=1
            for t in "${TARGETS[@]}"; do
                ((first)) || printf ', '; first=0
                printf '"%s": %s' "$t" "$(json_num "${RES[$m/$t]:-}")"
            done
            printf '}'
        done
        printf '\n  },\n  "ratios_to_direct": {\n'
        sep=""
        for m in plain_http_mbps connect_mbps small_rps; do
            printf '%s    "%s": {' "$sep" "$m"; sep=$',\n'
            first=1
            for t in "${TARGETS[@]}"; do
                is_proxy "$t" || continue
                ((first)) || printf ', '; first=0
                printf '"%s": %s' "$t" "$(json_num "$(ratio "${RES[$m/$t]:-}" "${RES[$m/direct]:-}")")"
            done
            printf '}'
        done
        printf '\n  },\n  "tollgate_vs": {\n'
        sep=""
        for m in plain_http_mbps connect_mbps small_rps rss_hwm_mib; do
            printf '%s    "%s": {"squid": %s, "tinyproxy": %s}' "$sep" "$m" \
                "$(json_num "$(ratio "${RES[$m/tollgate]:-}" "${RES[$m/squid]:-}")")" \
                "$(json_num "$(ratio "${RES[$m/tollgate]:-}" "${RES[$m/tinyproxy]:-}")")"
            sep=$',\n'
        done
        printf '\n  },\n  "targets": [\n'
        printf '    {"name": "CONNECT >= 0.9x direct", "ratio": %s, "min": 0.9, "result": "%s"},\n' "$(json_num "$1")" "$4"
        printf '    {"name": "plain HTTP >= 1.5x squid", "ratio": %s, "min": 1.5, "result": "%s"},\n' "$(json_num "$2")" "$5"
        printf '    {"name": "small req/s >= 2x squid", "ratio": %s, "min": 2, "result": "%s"}\n' "$(json_num "$3")" "$6"
        printf '  ],\n  "notes": ['
        first=1
        for n in "${NOTES[@]}"; do ((first)) || printf ', '; first=0; json_str "$n"; done
        printf ']\n}\n'
    } >"$f.tmp"
    mv "$f.tmp" "$f"
    cp "$f" "$dir/$(date -u +%Y%m%dT%H%M%SZ).json"
    log "wrote $f"
}

# -------------------------------------------------------------------- main --
main() {
    local t
    for t in "${TARGETS[@]}"; do
        [[ $t == direct || -n ${PORT[$t]:-} ]] || die "unknown target '$t' in BENCH_TARGETS"
    done
    install_peers
    T=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-bench.XXXXXX")
    # as root, nginx workers (nobody), squid (proxy) and tinyproxy drop
    # privileges and must still reach their files below $T
    chmod 0755 "$T"
    log "temp dir $T"
    build_tollgate
    start_upstream
    start_tollgate
    start_squid
    start_tinyproxy
    smoke_test
    busy_check
    measure_throughput plain_http_mbps "http://$HOST:$UP_HTTP/large"
    measure_throughput connect_mbps "https://$HOST:$UP_TLS/large"
    measure_rate
    measure_rss
    # later sections go here (each fills RES[...] for its own def_metric keys)
    report
}

main "$@"
