#!/usr/bin/env bash
# tollgate benchmark: tollgate vs squid vs tinyproxy vs a direct connection,
# all against ONE local nginx upstream, in ONE run. See bench/README.md.
#
#   bash bench/run.sh                      # as root on Debian 12
#   BENCH_LARGE_MB=256 BENCH_SECONDS=5 bash bench/run.sh   # quick run
#
# Every address used here is 127.0.0.1 (or "localhost", or a *.bench.test
# name that tollgate's policy maps to 127.0.0.1); nothing leaves the machine.
# Sections are functions; to add one (sandbox start-up vs bubblewrap, cache
# resume, ...), write a function that fills
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
# TLS interception section (see README, "TLS interception")
TLS_ON=${BENCH_TLS:-1}                   # 0 = skip the section
TLS_REQUESTS=${BENCH_TLS_REQUESTS:-3000} # small HTTPS GETs per curl run
TLS_PARALLEL=${BENCH_TLS_PARALLEL:-16}   # curl --parallel-max (kept-alive connections)
TLS_MINT_HOSTS=${BENCH_TLS_MINT_HOSTS:-20}  # fresh names for the handshake test
TLS_HOSTS=${BENCH_TLS_HOSTS:-10000}      # distinct names for the memory test
# which sections run: "" = all; proxy = proxy and TLS sections; sandbox =
# sandbox start-up only (no nginx, squid or tinyproxy; quick to re-run);
# cache = cache snapshots only (bench/cache.sh; not part of the default run)
ONLY=${BENCH_ONLY:-}
# sandbox start-up section (see README, "Sandbox start-up")
SBX_RUNS=${BENCH_SANDBOX_RUNS:-200}      # interleaved rounds measured
SBX_WARMUP=${BENCH_SANDBOX_WARMUP:-20}   # interleaved rounds not measured
SBX_TARGET=1.5                           # tollgate / bwrap start-up, at most (issue 11)

HOST=127.0.0.1
UP_HTTP=18080
UP_TLS=18443
UP_TLS_CLOSE=18444                       # same over TLS, but no keep-alive
# tollgate-metrics: the same proxy with --metrics on (issue 12: metrics and
# the audit hash chain, which is always on, may cost at most 3%)
declare -A PORT=([tollgate]=13128 [squid]=13129 [tinyproxy]=13130 [tollgate-metrics]=13134)
# intercepting tollgate instances (TLS section): rate and handshakes, and one
# fresh instance per memory run
declare -A TLS_PORT=([mitm]=13131 [mem_keepalive]=13132 [mem_close]=13133)
read -r -a TARGETS <<<"${BENCH_TARGETS:-direct tollgate tollgate-metrics squid tinyproxy}"

for v in LARGE_MB REPEAT DURATION WARMUP WRK_THREADS WRK_CONNS \
         TLS_ON TLS_REQUESTS TLS_PARALLEL TLS_MINT_HOSTS TLS_HOSTS SBX_RUNS SBX_WARMUP; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "bench: $v must be a whole number, got '${!v}'" >&2; exit 2; }
done
((LARGE_MB > 0 && REPEAT > 0 && DURATION > 0)) || { echo "bench: sizes/counts must be > 0" >&2; exit 2; }
((TLS_REQUESTS > 0 && TLS_PARALLEL > 0 && TLS_MINT_HOSTS > 0 && TLS_HOSTS > 0)) \
    || { echo "bench: BENCH_TLS_* counts must be > 0" >&2; exit 2; }
((SBX_RUNS >= 2)) || { echo "bench: BENCH_SANDBOX_RUNS must be >= 2" >&2; exit 2; }
case $ONLY in
    "" | proxy | sandbox) ;;
    # cache snapshots (issue 6): a script of its own, which needs none of
    # the servers here; it reads the same BENCH_SKIP_BUILD, BENCH_TOLLGATE_BIN
    # and BENCH_KEEP_TMP, and BENCH_CACHE_* (see README, "Cache snapshots")
    cache) exec bash "$BENCH_DIR/cache.sh" ;;
    *) echo "bench: BENCH_ONLY must be empty, 'proxy', 'sandbox' or 'cache', got '$ONLY'" >&2; exit 2 ;;
esac

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
TLS_DOWN=""              # why the TLS interception section has no numbers
TLS_CA=""                # the intercepting tollgate's CA certificate
declare -A TLSR=()       # TLS interception results ("" = failed / n/a)
SBX_DOWN=""              # why the sandbox start-up section has no numbers
declare -A SBX=()        # sandbox start-up results ("" = failed / n/a)

# def_metric KEY LABEL PRINTF-FORMAT IN-TABLE(1|0)
def_metric() { METRICS+=("$1"); MLABEL[$1]=$2; MFMT[$1]=$3; MTABLE[$1]=$4; }

def_metric plain_http_mbps  "plain HTTP GET /large (MB/s)"  "%.1f" 1
def_metric connect_mbps     "CONNECT+TLS GET /large (MB/s)" "%.1f" 1
def_metric small_rps        "small GETs, keep-alive (req/s)" "%.0f" 1
def_metric tls_small_rps    "small HTTPS GETs, curl (req/s)" "%.0f" 1
def_metric rss_hwm_mib      "peak RSS, VmHWM (MiB)"         "%.1f" 1
def_metric rss_idle_mib     "RSS at start (MiB)"            "%.1f" 0
def_metric small_p50_ms     "small GET latency p50 (ms)"    "%.3f" 0
def_metric small_p99_ms     "small GET latency p99 (ms)"    "%.3f" 0
def_metric small_sock_errs  "wrk socket errors"             "%.0f" 0
def_metric tls_small_conns  "curl connections, HTTPS GETs"  "%.0f" 0

log()  { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
warn() { printf '[bench %s] WARNING: %s\n' "$(date +%H:%M:%S)" "$*" >&2; NOTES+=("$*"); }
die()  { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
is_proxy() { [[ $1 != direct ]]; }
want_proxy() { [[ $ONLY != sandbox ]]; }    # proxy + TLS sections
want_sandbox() { [[ $ONLY != proxy ]]; }    # sandbox start-up section
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
                   [fallocate]=util-linux [unshare]=util-linux
                   [python3]=python3)
    local cmd pkg cand need=() missing=() fresh=()
    want_proxy && need+=(nginx squid tinyproxy wrk openssl curl fallocate)
    want_sandbox && need+=(bwrap python3 unshare)
    for cmd in "${need[@]}"; do
        # squid/nginx/tinyproxy live in /usr/sbin, which a non-root PATH may lack
        have "$cmd" || [[ -x /usr/sbin/$cmd ]] || missing+=("$cmd")
    done
    export PATH="$PATH:/usr/sbin:/sbin"
    if ((${#missing[@]} == 0)); then log "peers and tools already installed"; return; fi
    [[ $EUID == 0 ]] || die "missing: ${missing[*]}; run as root, or install them (apt-get install nginx-light squid tinyproxy wrk openssl curl bubblewrap python3)"
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
    selected tollgate || want_sandbox || return 0
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

    # *.bench.test: the names the TLS section sends through the intercepting
    # tollgate, which verifies nginx for them. CA:FALSE: rustls (webpki), which
    # tollgate uses upstream, refuses a CA certificate as a server's own
    # certificate, and openssl marks a self-signed one CA:TRUE by default.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -days 2 -subj "/CN=$HOST" \
        -addext "subjectAltName=IP:$HOST,DNS:localhost,DNS:*.bench.test" \
        -addext "basicConstraints=critical,CA:FALSE" \
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
    server {
        listen $HOST:$UP_TLS_CLOSE ssl;
        ssl_certificate $d/cert.pem;
        ssl_certificate_key $d/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        keepalive_timeout 0;
        root $d/www;
    }
}
EOF
    local p
    for p in "$UP_HTTP" "$UP_TLS" "$UP_TLS_CLOSE"; do
        ! port_open "$p" || die "port $HOST:$p is already in use; stop whatever listens there"
    done
    nginx -t -q -p "$d" -e "$d/error.log" -c "$d/nginx.conf" || die "nginx rejected $d/nginx.conf"
    spawn nginx "$d/stdout.log" nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;'
    if ! wait_port nginx "$UP_HTTP" || ! wait_port nginx "$UP_TLS" || ! wait_port nginx "$UP_TLS_CLOSE"; then
        log_tail "$d/error.log"
        die "upstream: $WAIT_ERR"
    fi
    log "upstream: nginx on http://$HOST:$UP_HTTP, https://$HOST:$UP_TLS and https://$HOST:$UP_TLS_CLOSE (no keep-alive) (pid ${PID[nginx]})"
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
    start_tollgate_as tollgate
    start_tollgate_as tollgate-metrics --metrics "unix:$T/tollgate-metrics.sock"
}

# start_tollgate_as TARGET [EXTRA ARGS...]: one tollgate proxy on TARGET's port
start_tollgate_as() {
    local name=$1
    shift
    up "$name" || return 0
    proxy_port_free "$name" || return 0
    if [[ ! -x $TOLLGATE_BIN ]]; then mark_down "$name" "no binary at $TOLLGATE_BIN"; return; fi
    log "$name: starting $TOLLGATE_BIN proxy $*"
    spawn "$name" "$T/$name.log" "$TOLLGATE_BIN" proxy \
        --policy "$BENCH_DIR/tollgate-policy.yaml" \
        --listen "$HOST:${PORT[$name]}" \
        --audit-log "$T/$name-audit.jsonl" "$@"
    proxy_started "$name" "$T/$name.log"
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

# -------------------------------------------------------- TLS interception --
# A second tollgate, with a CA, whose policy restricts methods for
# 127.0.0.1:18443 and *.bench.test: its CONNECT tunnels there are
# intercepted (tollgate terminates TLS with a leaf from its CA and talks TLS
# to nginx itself). The tollgate on 13128 allows the same upstream without
# methods, so its tunnels stay plain; comparing the two gives the cost of
# interception. Every *.bench.test name is mapped to 127.0.0.1 by the
# policy's `hosts:`, so no name is ever looked up in DNS.

tls_down() { TLS_DOWN=$1; log "TLS interception NOT MEASURED: $1"; }
tls_ok() { [[ $TLS_ON == 1 && -z $TLS_DOWN ]]; }

# tls_label KIND -> how reports name a curl path
tls_label() {
    case $1 in
        mitm) echo "tollgate (intercepted)" ;;
        tollgate) echo "tollgate (plain CONNECT)" ;;
        *) echo "$1" ;;
    esac
}

# tls_curl_args KIND: sets TLS_ARGS, the curl options that send a request
# directly (direct), through a plain CONNECT tunnel (tollgate, squid,
# tinyproxy), or through an intercepting tollgate (keys of TLS_PORT), with
# the CA that will sign what the client sees.
declare -a TLS_ARGS=()
tls_curl_args() {
    if [[ $1 == direct ]]; then
        TLS_ARGS=(--noproxy '*' --cacert "$CA_CERT")
    elif [[ -n ${TLS_PORT[$1]:-} ]]; then
        TLS_ARGS=(--noproxy '' --proxy "http://$HOST:${TLS_PORT[$1]}" --cacert "$TLS_CA")
    else
        TLS_ARGS=(--noproxy '' --proxy "http://$HOST:${PORT[$1]}" --cacert "$CA_CERT")
    fi
}

# url_cfg FILE URL FIRST LAST: a curl -K config asking for URL once for each
# i = FIRST..LAST ("{i}" in URL is replaced by i), each saved to /dev/null.
url_cfg() {
    awk -v u="$2" -v a="$3" -v b="$4" 'BEGIN { for (i = a; i <= b; i++) {
        p = index(u, "{i}"); s = p ? substr(u, 1, p - 1) i substr(u, p + 3) : u
        printf "url = \"%s\"\noutput = \"/dev/null\"\n", s } }' >"$1"
}

# curl_batch KIND CFG OUT: one curl process fetching every URL of CFG over
# at most TLS_PARALLEL HTTP/1.1 connections, each kept alive and reused.
# Sets BATCH_SECS (wall time), BATCH_OK (full 200 responses) and BATCH_CONNS
# (connections curl opened), and BATCH_FIRST: the median time from the end
# of the TLS handshake to the end of the response, over the first request on
# each new connection (ms). One "code size connects appconnect total" line
# per URL in OUT.
BATCH_SECS="" BATCH_OK=0 BATCH_CONNS=0 BATCH_FIRST=
curl_batch() {
    local kind=$1 cfg=$2 out=$3 start end
    tls_curl_args "$kind"
    start=$EPOCHREALTIME
    curl -q --no-progress-meter --http1.1 --parallel --parallel-max "$TLS_PARALLEL" \
        --max-time 60 "${TLS_ARGS[@]}" \
        -w '%{http_code} %{size_download} %{num_connects} %{time_appconnect} %{time_total}\n' \
        -K "$cfg" >"$out" 2>"$out.err" || true
    end=$EPOCHREALTIME
    BATCH_SECS=$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.6f", e - s }')
    read -r BATCH_OK BATCH_CONNS < <(awk -v n="$SMALL_BYTES" '$1 == 200 && $2 == n { ok++ }
        { c += $3 } END { print ok + 0, c + 0 }' "$out")
    BATCH_FIRST=$(awk '$1 == 200 && $3 == 1 { print ($5 - $4) * 1000 }' "$out" | median)
}

# spawn_tollgate_tls NAME POLICY: an intercepting tollgate on TLS_PORT[NAME],
# trusting nginx's certificate upstream. Returns 1 (reason in WAIT_ERR) if it
# does not start.
spawn_tollgate_tls() {
    local name=$1 d=$T/tls
    spawn "$name" "$d/$name.log" "$TOLLGATE_BIN" proxy \
        --policy "$2" \
        --listen "$HOST:${TLS_PORT[$name]}" \
        --audit-log "$d/$name-audit.jsonl" \
        --ca-dir "$d/ca" \
        --upstream-ca "$CA_CERT" \
        --state-dir "$d/state"
    if ! wait_port "$name" "${TLS_PORT[$name]}"; then
        log_tail "$d/$name.log"
        return 1
    fi
    log "tollgate ($name): intercepting on $HOST:${TLS_PORT[$name]} (pid ${PID[$name]})"
}

# stop_server NAME: stop one process this script started, and forget it.
stop_server() {
    local pid=${PID[$1]:-} i p keep=()
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${ALL_PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    ALL_PIDS=("${keep[@]}")
    unset "PID[$1]"
}

start_tollgate_tls() {
    [[ $TLS_ON == 1 ]] || { TLS_DOWN="BENCH_TLS=0"; return 0; }
    selected tollgate || { tls_down "tollgate is not in BENCH_TARGETS"; return 0; }
    [[ -x $TOLLGATE_BIN ]] || { tls_down "no binary at $TOLLGATE_BIN"; return 0; }
    local d=$T/tls name p i out code size
    for name in "${!TLS_PORT[@]}"; do
        p=${TLS_PORT[$name]}
        if port_open "$p"; then tls_down "port $HOST:$p is already in use by another process"; return 0; fi
    done
    mkdir -p "$d"
    if ! "$TOLLGATE_BIN" ca init --dir "$d/ca" >"$d/ca-init.log" 2>&1; then
        log_tail "$d/ca-init.log"
        tls_down "tollgate ca init failed (log above); does this build have TLS interception?"
        return 0
    fi
    TLS_CA=$d/ca/ca.crt
    {
        echo "# written by bench/run.sh: intercept 127.0.0.1:$UP_TLS and *.bench.test"
        echo "version: 1"
        echo "mode: limited"
        echo "allow:"
        echo "  - host: $HOST"
        echo "    ports: [$UP_TLS]"
        echo "    methods: [GET, HEAD]"
        echo '  - host: "*.bench.test"'
        echo "    ports: [$UP_TLS]"
        echo "    methods: [GET, HEAD]"
        echo "allow_internal: [$HOST/32]"
        echo "hosts:"
        echo "  smoke.bench.test: $HOST"
        for ((i = 1; i <= TLS_MINT_HOSTS; i++)); do echo "  h$i.bench.test: $HOST"; done
    } >"$d/mitm-policy.yaml"
    if ! spawn_tollgate_tls mitm "$d/mitm-policy.yaml"; then
        tls_down "intercepting tollgate failed to start: $WAIT_ERR (log above)"
        return 0
    fi
    # smoke test: both an IP and a name, checked for status and size, and
    # the leaf must be our CA's (curl --cacert TLS_CA verifies it)
    tls_curl_args mitm
    for p in "$HOST" smoke.bench.test; do
        out=$(curl -q -s --http1.1 --max-time 30 "${TLS_ARGS[@]}" -o /dev/null \
            -w '%{http_code} %{size_download}\n' "https://$p:$UP_TLS/small" || true)
        read -r code size <<<"$out"
        if [[ ${code:-} != 200 || ${size:-} != "$SMALL_BYTES" ]]; then
            log_tail "$d/mitm.log"
            tls_down "smoke test GET https://$p:$UP_TLS/small through the intercepting tollgate failed (HTTP ${code:-none}, ${size:-0} bytes)"
            return 0
        fi
    done
    if ! grep -q '"kind":"mitm"' "$d/mitm-audit.jsonl" 2>/dev/null; then
        # the audit log is written in batches; give it a moment
        sleep 1
        grep -q '"kind":"mitm"' "$d/mitm-audit.jsonl" 2>/dev/null \
            || tls_down "the smoke test went through, but the audit log has no intercepted (mitm) request"
    fi
}

# ------------------------------------------------------- measure_tls_rate --
# TLS_REQUESTS small HTTPS GETs from one curl process over TLS_PARALLEL
# kept-alive connections, rate = requests / wall time. Direct, through each
# proxy's plain CONNECT tunnel, and through the intercepting tollgate. Round
# robin over the paths, best of REPEAT; any response that is not a full 200
# means no number for that path.
measure_tls_rate() {
    [[ $TLS_ON == 1 ]] || return 0
    local kinds=() k t i rate cfg=$T/tls/rate.cfg
    local -A best=() conns=() first=() failed=()
    for t in "${TARGETS[@]}"; do up "$t" && kinds+=("$t"); done
    tls_ok && kinds+=(mitm)
    ((${#kinds[@]} > 0)) || return 0
    mkdir -p "$T/tls"
    url_cfg "$cfg" "https://$HOST:$UP_TLS/small" 1 "$TLS_REQUESTS"
    log "measuring small HTTPS GETs: curl, $TLS_REQUESTS URLs, --parallel-max $TLS_PARALLEL, HTTP/1.1, best of $REPEAT"
    for ((i = 1; i <= REPEAT; i++)); do
        for k in "${kinds[@]}"; do
            [[ -z ${failed[$k]:-} ]] || continue
            curl_batch "$k" "$cfg" "$T/tls/rate-$k-$i.txt"
            if ((BATCH_OK != TLS_REQUESTS)); then
                warn "$(tls_label "$k"): small HTTPS GETs: run $i got $BATCH_OK full 200 responses of $TLS_REQUESTS; no number reported (curl output in $T/tls/rate-$k-$i.txt)"
                failed[$k]=1
                continue
            fi
            rate=$(awk -v n="$TLS_REQUESTS" -v s="$BATCH_SECS" 'BEGIN { printf "%.1f", n / s }')
            TLSR[runs/$k]+="$rate "
            log "  run $i: $(tls_label "$k"): $rate req/s"
            if awk -v a="$rate" -v b="${best[$k]:-0}" 'BEGIN { exit !(a > b) }'; then
                best[$k]=$rate; conns[$k]=$BATCH_CONNS; first[$k]=$BATCH_FIRST
            fi
        done
    done
    for k in "${kinds[@]}"; do
        if [[ -n ${failed[$k]:-} ]]; then best[$k]=""; conns[$k]=""; first[$k]=""; fi
        TLSR[first/$k]=${first[$k]}
        if [[ $k == mitm ]]; then
            TLSR[rps_mitm]=${best[$k]}; TLSR[conns_mitm]=${conns[$k]}
        else
            RES[tls_small_rps/$k]=${best[$k]}; RES[tls_small_conns/$k]=${conns[$k]}
        fi
        if [[ -n ${conns[$k]} ]] && ((${conns[$k]} > TLS_PARALLEL)); then
            warn "$(tls_label "$k"): curl opened ${conns[$k]} connections for $TLS_REQUESTS HTTPS GETs (at most $TLS_PARALLEL if kept alive)"
        fi
        log "  $(tls_label "$k"): $(fnum "%.0f" "${best[$k]}") req/s over ${conns[$k]:-?} connections"
    done
    TLSR[ratio]=$(ratio "${TLSR[rps_mitm]:-}" "${RES[tls_small_rps/tollgate]:-}")
    # A first response that lags far behind the direct one on every new
    # tunnel: seen when a proxy relays the server's TLS 1.3 session tickets
    # and the response in separate small writes without TCP_NODELAY.
    for k in tollgate squid tinyproxy; do
        if [[ -n ${TLSR[first/$k]:-} && -n ${TLSR[first/direct]:-} ]] \
            && awk -v a="${TLSR[first/$k]}" -v b="${TLSR[first/direct]}" 'BEGIN { exit !(a - b > 20) }'; then
            warn "$(tls_label "$k"): the first HTTPS response on each new tunnel took ${TLSR[first/$k]} ms after the TLS handshake (direct: ${TLSR[first/direct]} ms, median of $TLS_PARALLEL), about one delayed ACK (40 ms) more; later requests on the tunnel are not delayed"
        fi
    done
}

median() { # median < numbers, one a line -> median with 2 decimals, or ""
    sort -g | awk '{ v[NR] = $1 } END { if (NR) printf "%.2f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# -------------------------------------------------- measure_tls_handshake --
# Leaves are minted once per host. For each of TLS_MINT_HOSTS names never
# seen before (h1.bench.test ...), curl's time_appconnect (start until its
# TLS handshake with the proxy's leaf is done, so it includes the TCP connect
# and the CONNECT exchange) on the first request, then on a second request to
# the same names, each in a new curl process (new connection, no TLS session
# to resume). The same through tollgate's plain tunnel (TLS with nginx) is
# the reference.
measure_tls_handshake() {
    tls_ok || return 0
    local pass i url out code secs vals bad
    log "measuring TLS handshake via the intercepting tollgate: $TLS_MINT_HOSTS fresh names, first and second connection"
    for pass in first later plain; do
        vals="" bad=""
        if [[ $pass == plain ]]; then
            up tollgate || continue
            tls_curl_args tollgate
        else
            tls_curl_args mitm
        fi
        for ((i = 1; i <= TLS_MINT_HOSTS; i++)); do
            if [[ $pass == plain ]]; then url="https://$HOST:$UP_TLS/small"; else url="https://h$i.bench.test:$UP_TLS/small"; fi
            out=$(curl -q -s --http1.1 --max-time 30 "${TLS_ARGS[@]}" -o /dev/null \
                -w '%{http_code} %{time_appconnect}\n' "$url" || true)
            read -r code secs <<<"$out"
            if [[ ${code:-} != 200 ]]; then
                bad="$url got HTTP ${code:-none}"
                break
            fi
            vals+="$(awk -v s="$secs" 'BEGIN { printf "%.3f", s * 1000 }') "
        done
        if [[ -n $bad ]]; then
            warn "TLS handshake test ($pass): $bad; no number reported"
            TLSR[hs_$pass]=""
            continue
        fi
        TLSR[hs_${pass}_list]=${vals% }
        TLSR[hs_$pass]=$(tr ' ' '\n' <<<"${vals% }" | median)
        log "  $pass: median ${TLSR[hs_$pass]} ms"
    done
    # minting cost: median over hosts of (first - second) for the same name
    if [[ -n ${TLSR[hs_first]:-} && -n ${TLSR[hs_later]:-} ]]; then
        TLSR[hs_diff]=$(paste -d' ' <(tr ' ' '\n' <<<"${TLSR[hs_first_list]}") <(tr ' ' '\n' <<<"${TLSR[hs_later_list]}") \
            | awk '{ print $1 - $2 }' | median)
    fi
    if [[ -n ${TLSR[hs_later]:-} && -n ${TLSR[hs_plain]:-} ]] \
        && awk -v a="${TLSR[hs_later]}" -v b="${TLSR[hs_plain]}" 'BEGIN { exit !(a - b > 30) }'; then
        warn "TLS handshakes with the intercepting tollgate take $(awk -v a="${TLSR[hs_later]}" -v b="${TLSR[hs_plain]}" 'BEGIN { printf "%.0f", a - b }') ms longer than with nginx through a plain tunnel, even with the leaf cached: about one delayed ACK (40 ms), the pattern of Nagle's algorithm on the proxy's client socket (its TLS flight is sent in several writes)"
    fi
}

# ----------------------------------------------------- measure_tls_memory --
# RSS of a fresh intercepting tollgate after one request to each of 0, 1,000,
# 5,000 and TLS_HOSTS distinct names (m1.bench.test ...), all allowed by
# "*.bench.test" with methods [GET] and mapped by a generated `hosts:`. Two
# runs: against nginx with keep-alive (18443, so tollgate keeps one idle
# upstream connection per host for its pool timeout) and against nginx
# without keep-alive (18444, nothing pooled), which leaves the leaf cache
# (1,024 hosts) as the only per-host state.
TLS_MEM_POINTS=""
mem_sample() { # mem_sample RUN HOSTS
    local pid=${PID[$1]} fds
    TLSR[mem/$1/$2/rss]=$(rss_mib "$pid" VmRSS)
    TLSR[mem/$1/$2/hwm]=$(rss_mib "$pid" VmHWM)
    fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l) || fds=""
    TLSR[mem/$1/$2/fds]=$fds
    log "  $1: $2 hosts: VmRSS ${TLSR[mem/$1/$2/rss]:-?} MiB, VmHWM ${TLSR[mem/$1/$2/hwm]:-?} MiB, $fds open descriptors"
}

measure_tls_memory() {
    tls_ok || return 0
    local d=$T/tls run up_port c prev i mid last g1 g2 points=(0)
    for c in 1000 5000; do
        if ((c < TLS_HOSTS)); then points+=("$c"); fi
    done
    points+=("$TLS_HOSTS")
    TLS_MEM_POINTS=${points[*]}
    {
        echo "# written by bench/run.sh: intercept *.bench.test, $TLS_HOSTS names"
        echo "version: 1"
        echo "mode: limited"
        echo "allow:"
        echo '  - host: "*.bench.test"'
        echo "    ports: [$UP_TLS, $UP_TLS_CLOSE]"
        echo "    methods: [GET]"
        echo "allow_internal: [$HOST/32]"
        echo "hosts:"
        for ((i = 1; i <= TLS_HOSTS; i++)); do echo "  m$i.bench.test: $HOST"; done
    } >"$d/mem-policy.yaml"
    for run in mem_keepalive mem_close; do
        [[ $run == mem_keepalive ]] && up_port=$UP_TLS || up_port=$UP_TLS_CLOSE
        log "measuring tollgate memory with $TLS_HOSTS distinct intercepted hosts, upstream $HOST:$up_port"
        if ! spawn_tollgate_tls "$run" "$d/mem-policy.yaml"; then
            warn "$run: intercepting tollgate failed to start: $WAIT_ERR; no memory numbers"
            TLSR[mem_failed/$run]=1
            continue
        fi
        mem_sample "$run" 0
        prev=0
        for c in "${points[@]:1}"; do
            url_cfg "$d/mem.cfg" "https://m{i}.bench.test:$up_port/small" $((prev + 1)) "$c"
            curl_batch "$run" "$d/mem.cfg" "$d/$run-$c.txt"
            if ((BATCH_OK != c - prev)); then
                warn "$run: only $BATCH_OK of $((c - prev)) GETs to hosts $((prev + 1))..$c were full 200 responses (curl output in $d/$run-$c.txt); RSS is still reported"
                TLSR[mem_failed/$run]=1
            fi
            mem_sample "$run" "$c"
            prev=$c
        done
        stop_server "$run"
        # Plateau: over the last stretch (5,000 -> 10,000 hosts) VmRSS grew
        # by at most a quarter of what the rate up to 5,000 hosts predicts,
        # or by at most 2 MiB.
        mid=${points[-2]} last=${points[-1]}
        if ((${#points[@]} >= 3)) && [[ -n ${TLSR[mem/$run/0/rss]} && -n ${TLSR[mem/$run/$mid/rss]} \
            && -n ${TLSR[mem/$run/$last/rss]} ]]; then
            g1=$(awk -v a="${TLSR[mem/$run/0/rss]}" -v b="${TLSR[mem/$run/$mid/rss]}" 'BEGIN { printf "%.1f", b - a }')
            g2=$(awk -v a="${TLSR[mem/$run/$mid/rss]}" -v b="${TLSR[mem/$run/$last/rss]}" 'BEGIN { printf "%.1f", b - a }')
            TLSR[mem_growth_first/$run]=$g1
            TLSR[mem_growth_last/$run]=$g2
            TLSR[mem_plateau/$run]=$(awk -v g1="$g1" -v g2="$g2" -v m="$mid" -v l="$last" \
                'BEGIN { lim = 0.25 * g1 * (l - m) / m; if (lim < 2) lim = 2; print (g2 <= lim ? "yes" : "no") }')
        fi
    done
}

# ------------------------------------------------- measure_sandbox_startup --
# Start-up of a sandbox around /bin/true, tollgate against bubblewrap, in
# interleaved rounds (bench/interleave.py: each round runs every command
# once, no shell in between), so a machine whose speed drifts slows them
# all alike:
#   true      /bin/true itself: the floor (posix_spawn + exec + wait in the harness)
#   unshare   new net, mount, PID, IPC and UTS namespaces, nothing else
#   bwrap     bubblewrap with every namespace, / read-only, /dev and /proc
#   tollgate  tollgate exec --policy off: the same namespaces, an overlay
#             root, lo up, and the proxy listening inside
# tollgate runs with TOLLGATE_STATE_DIR on an empty directory (so no CA from
# /var/lib/tollgate turns interception on) and TMPDIR in our temp dir (its
# per-run directories land there, and we can check they are all removed).
SBX_NAMES=(true unshare bwrap tollgate)
declare -A SBX_CMD=()
declare -A SBX_LABEL=([true]="/bin/true" [unshare]="unshare (5 namespaces)"
                      [bwrap]="bwrap --unshare-all" [tollgate]="tollgate exec --policy off")

sbx_down() { SBX_DOWN=$1; log "sandbox start-up NOT MEASURED: $1"; }

# sbx_field CSV NAME COLUMN -> that column of interleave.py's CSV row NAME
# (hyperfine's columns), in ms
sbx_field() {
    awk -F, -v n="$2" -v c="$3" 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
        $1 == n && (c in col) && $col[c] != "" { printf "%.3f", $col[c] * 1000 }' "$1"
}

measure_sandbox() {
    want_sandbox || return 0
    local d=$T/sandbox name out rc left args=() ok=()
    if [[ $EUID != 0 ]]; then sbx_down "needs root (tollgate exec and unshare do)"; return 0; fi
    have python3 || { sbx_down "python3 not found"; return 0; }
    mkdir -p "$d/state" "$d/tmp"
    SBX_CMD[true]=/bin/true
    SBX_CMD[unshare]="unshare --net --mount --pid --fork --ipc --uts /bin/true"
    SBX_CMD[bwrap]="bwrap --unshare-all --ro-bind / / --dev /dev --proc /proc /bin/true"
    # interleave.py splits the command line like a shell: quote the path
    SBX_CMD[tollgate]="$(printf '%q' "$TOLLGATE_BIN") exec --policy off -- /bin/true"
    # each command once, untimed: it must exit 0 (interleave.py stops at
    # the first failure), or it is left out with the reason
    for name in "${SBX_NAMES[@]}"; do
        if [[ $name == tollgate && -n ${DOWN[tollgate]:-} ]]; then
            SBX[fail/$name]=${DOWN[tollgate]}
        elif [[ $name == tollgate && ! -x $TOLLGATE_BIN ]]; then
            SBX[fail/$name]="no binary at $TOLLGATE_BIN"
        else
            rc=0
            out=$(TOLLGATE_STATE_DIR=$d/state TMPDIR=$d/tmp timeout 20 \
                bash -c "exec ${SBX_CMD[$name]}" 2>&1 </dev/null) || rc=$?
            if ((rc != 0)); then
                SBX[fail/$name]="\`${SBX_CMD[$name]}\` exited with status $rc: $(head -n 1 <<<"$out")"
            fi
        fi
        if [[ -n ${SBX[fail/$name]:-} ]]; then
            warn "sandbox start-up: $name not measured: ${SBX[fail/$name]}"
            continue
        fi
        ok+=("$name")
        args+=("$name" "${SBX_CMD[$name]}")
    done
    if ((${#ok[@]} == 0)); then sbx_down "no command ran (reasons in the notes)"; return 0; fi
    # its own sample: in a full run this section comes minutes after busy_check
    SBX[busy]=$(cpu_busy_pct)
    log "CPU busy before the sandbox start-up runs: ${SBX[busy]:-?}% of $(nproc) CPUs"
    if [[ -n ${SBX[busy]} ]] && ((SBX[busy] > 20)); then
        warn "sandbox start-up: other work kept the CPUs ${SBX[busy]}% busy just before measuring; start-up times are unreliable, rerun on a quiet machine"
    fi
    log "measuring sandbox start-up: $SBX_WARMUP + $SBX_RUNS interleaved rounds: ${ok[*]}"
    if ! TOLLGATE_STATE_DIR=$d/state TMPDIR=$d/tmp python3 "$BENCH_DIR/interleave.py" \
        --warmup "$SBX_WARMUP" --runs "$SBX_RUNS" \
        --export-json "$d/runs.json" --export-csv "$d/runs.csv" \
        "${args[@]}" >"$d/runs.txt" 2>&1 </dev/null; then
        log_tail "$d/runs.txt"
        sbx_down "interleave.py failed (log above)"
        return 0
    fi
    for name in "${ok[@]}"; do
        SBX[mean/$name]=$(sbx_field "$d/runs.csv" "$name" mean)
        SBX[stddev/$name]=$(sbx_field "$d/runs.csv" "$name" stddev)
        SBX[median/$name]=$(sbx_field "$d/runs.csv" "$name" median)
        SBX[min/$name]=$(sbx_field "$d/runs.csv" "$name" min)
        SBX[max/$name]=$(sbx_field "$d/runs.csv" "$name" max)
        SBX[user/$name]=$(sbx_field "$d/runs.csv" "$name" user)
        SBX[system/$name]=$(sbx_field "$d/runs.csv" "$name" system)
        log "  $name: ${SBX[mean/$name]:-?} ± ${SBX[stddev/$name]:-?} ms, median ${SBX[median/$name]:-?} ms"
    done
    SBX[ratio]=$(ratio "${SBX[median/tollgate]:-}" "${SBX[median/bwrap]:-}")
    SBX[ratio_mean]=$(ratio "${SBX[mean/tollgate]:-}" "${SBX[mean/bwrap]:-}")
    SBX[check]=$(check_max "${SBX[ratio]}" "$SBX_TARGET")
    mkdir -p "$BENCH_DIR/results"
    cp "$d/runs.json" "$BENCH_DIR/results/sandbox-runs.json" && SBX[export]=bench/results/sandbox-runs.json
    # tollgate removes its run directory (spec, scratch mount point) on exit
    left=$(find "$d/tmp" -mindepth 1 -maxdepth 1 -name 'tollgate-run-*' | wc -l)
    ((left == 0)) || warn "sandbox start-up: $left tollgate run directories were left in $d/tmp"
    if [[ ${SBX[check]} == FAIL ]]; then
        warn "sandbox start-up: tollgate is over its target; to see where the time goes: strace -f -c -w $TOLLGATE_BIN exec --policy off -- /bin/true (per-syscall time) or perf stat -e task-clock,context-switches,cpu-migrations,page-faults $TOLLGATE_BIN exec --policy off -- /bin/true"
    fi
}

# busy_check: before measuring, sample how busy the CPUs are for 2 s (all our
# servers are idle then); note it when other work competes with the benchmark.
BUSY_PCT=""
cpu_busy_pct() { # cpu_busy_pct -> % of all CPUs busy over the next 2 s
    local a b
    a=$(awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat)
    sleep 2
    b=$(awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ")
        busy = y[1] - x[1]; idle = y[2] - x[2]
        if (busy + idle > 0) printf "%.0f", 100 * busy / (busy + idle) }'
}
busy_check() {
    BUSY_PCT=$(cpu_busy_pct)
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
# check_max VALUE MAX -> "PASS"/"FAIL"/"n/a"
check_max() { [[ -z $1 ]] && echo "n/a" && return; awk -v v="$1" -v m="$2" 'BEGIN { print (v <= m ? "PASS" : "FAIL") }'; }

report() {
    local m t line v tg_sq tg_tp c1="" c2="" c3="" c4="" r1="" r2="" r3="" r4=""
    echo
    echo "tollgate benchmark  $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(nproc) CPUs, kernel $(uname -r)"
    if want_proxy; then report_proxy; fi
    if want_sandbox; then report_sandbox; fi
    echo
    echo "targets (tollgate):"
    if want_proxy; then
        printf "  %-36s %8s  %s\n" "CONNECT      >= 0.9x direct" "$(xfmt "$r1")" "$c1"
        printf "  %-36s %8s  %s\n" "plain HTTP   >= 1.5x squid" "$(xfmt "$r2")" "$c2"
        printf "  %-36s %8s  %s\n" "small req/s  >= 2x squid" "$(xfmt "$r3")" "$c3"
        printf "  %-36s %8s  %s\n" "intercepted  >= 0.5x plain CONNECT" "$(xfmt "$r4")" "$c4"
    fi
    if want_sandbox; then
        printf "  %-36s %8s  %s\n" "start-up     <= ${SBX_TARGET}x bwrap (median)" "$(xfmt "${SBX[ratio]:-}")" "${SBX[check]:-n/a}"
    fi
    if want_proxy && ((${#DOWN[@]} > 0)); then
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

    write_json "$r1" "$r2" "$r3" "$c1" "$c2" "$c3" "$r4" "$c4"
}

# report_proxy: the proxy tables and the TLS block; sets r1..r4 and c1..c4
# of report() (the target ratios and their checks) for its footer.
report_proxy() {
    local tw=34 cw=17
    echo "upstream nginx 127.0.0.1 (/large ${LARGE_MB} MiB, /small ${SMALL_BYTES} B); curl best of $REPEAT; wrk -t$WRK_THREADS -c$WRK_CONNS -d${DURATION}s"
    echo "HTTPS GETs: one curl, $TLS_REQUESTS x /small, --http1.1 --parallel-max $TLS_PARALLEL; CPU busy before measuring: ${BUSY_PCT:-?}%"
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
    for m in plain_http_mbps connect_mbps small_rps tls_small_rps; do
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
    for m in plain_http_mbps connect_mbps small_rps tls_small_rps rss_hwm_mib; do
        tg_sq=$(ratio "${RES[$m/tollgate]:-}" "${RES[$m/squid]:-}")
        tg_tp=$(ratio "${RES[$m/tollgate]:-}" "${RES[$m/tinyproxy]:-}")
        printf "%-${tw}s%${cw}s%${cw}s\n" "${MLABEL[$m]}" "$(xfmt "$tg_sq")" "$(xfmt "$tg_tp")"
    done
    echo
    printf "%-${tw}s%${cw}s\n" "tollgate --metrics (issue 12)" "/tollgate"
    for m in plain_http_mbps connect_mbps small_rps; do
        v=$(ratio "${RES[$m/tollgate-metrics]:-}" "${RES[$m/tollgate]:-}")
        printf "%-${tw}s%${cw}s\n" "${MLABEL[$m]}" "$(xfmt "$v")"
    done
    r1=$(ratio "${RES[connect_mbps/tollgate]:-}" "${RES[connect_mbps/direct]:-}")
    r2=$(ratio "${RES[plain_http_mbps/tollgate]:-}" "${RES[plain_http_mbps/squid]:-}")
    r3=$(ratio "${RES[small_rps/tollgate]:-}" "${RES[small_rps/squid]:-}")
    r4=${TLSR[ratio]:-}
    c1=$(check x "$r1" 0.9); c2=$(check x "$r2" 1.5); c3=$(check x "$r3" 2); c4=$(check x "$r4" 0.5)
    report_tls
}

report_sandbox() {
    local name tw=30 base
    echo
    echo "sandbox start-up (interleaved rounds: $SBX_WARMUP warm-up + $SBX_RUNS measured, as root; ms); CPU busy before: ${SBX[busy]:-?}%"
    if [[ -n $SBX_DOWN ]]; then echo "  not measured: $SBX_DOWN"; return; fi
    printf "  %-${tw}s%20s%10s%10s%14s\n" "" "mean ± stddev" "median" "min" "median-true"
    for name in "${SBX_NAMES[@]}"; do
        if [[ -n ${SBX[fail/$name]:-} || -z ${SBX[mean/$name]:-} ]]; then
            printf "  %-${tw}s%20s\n" "${SBX_LABEL[$name]}" "n/a"
            continue
        fi
        base=$(awk -v a="${SBX[median/$name]}" -v b="${SBX[median/true]:-}" 'BEGIN { if (b != "") printf "%+.2f", a - b; else print "n/a" }')
        printf "  %-${tw}s%20s%10s%10s%14s\n" "${SBX_LABEL[$name]}" \
            "$(fnum "%.2f" "${SBX[mean/$name]}") ± $(fnum "%.2f" "${SBX[stddev/$name]:-}")" \
            "$(fnum "%.2f" "${SBX[median/$name]}")" "$(fnum "%.2f" "${SBX[min/$name]}")" "$base"
    done
    printf "  %-${tw}s%8s   target <= %sx: %s\n" "tollgate / bwrap, median" "$(xfmt "${SBX[ratio]:-}")" \
        "$SBX_TARGET" "${SBX[check]:-n/a}"
    printf "  %-${tw}s%8s\n" "tollgate / bwrap, mean" "$(xfmt "${SBX[ratio_mean]:-}")"
    echo "  commands:"
    for name in "${SBX_NAMES[@]}"; do printf "    %-10s%s\n" "$name" "${SBX_CMD[$name]:-}"; done
}

report_tls() {
    local run p tw=50 label
    echo
    echo "TLS interception (tollgate --ca-dir, policy with methods, 127.0.0.1:${TLS_PORT[mitm]})"
    if [[ -n $TLS_DOWN ]]; then echo "  not measured: $TLS_DOWN"; return; fi
    printf "  %-${tw}s%10s\n" "small HTTPS GETs, intercepted (req/s)" "$(fnum "%.0f" "${TLSR[rps_mitm]:-}")"
    printf "  %-${tw}s%10s\n" "small HTTPS GETs, tollgate plain CONNECT (req/s)" "$(fnum "%.0f" "${RES[tls_small_rps/tollgate]:-}")"
    printf "  %-${tw}s%10s\n" "small HTTPS GETs, squid CONNECT (req/s)" "$(fnum "%.0f" "${RES[tls_small_rps/squid]:-}")"
    printf "  %-${tw}s%10s\n" "intercepted / tollgate plain CONNECT" "$(xfmt "${TLSR[ratio]:-}")"
    printf "  %-${tw}s%10s\n" "first response after handshake, intercepted (ms)" "$(fnum "%.2f" "${TLSR[first/mitm]:-}")"
    printf "  %-${tw}s%10s\n" "  same, plain CONNECT: tollgate / squid / direct" \
        "$(fnum "%.1f" "${TLSR[first/tollgate]:-}") / $(fnum "%.1f" "${TLSR[first/squid]:-}") / $(fnum "%.1f" "${TLSR[first/direct]:-}")"
    echo "  TLS handshake, curl time_appconnect, median of $TLS_MINT_HOSTS (ms):"
    printf "    %-${tw}s%8s\n" "first request to a new host (leaf minted)" "$(fnum "%.2f" "${TLSR[hs_first]:-}")"
    printf "    %-${tw}s%8s\n" "second request, new connection (leaf cached)" "$(fnum "%.2f" "${TLSR[hs_later]:-}")"
    printf "    %-${tw}s%8s\n" "first - second, median per host (minting)" "$(fnum "%.2f" "${TLSR[hs_diff]:-}")"
    printf "    %-${tw}s%8s\n" "tollgate plain CONNECT, TLS with nginx (reference)" "$(fnum "%.2f" "${TLSR[hs_plain]:-}")"
    echo "  tollgate memory, one GET to each of $TLS_HOSTS distinct intercepted hosts:"
    printf "    %-28s%8s%10s%10s%10s\n" "upstream" "hosts" "VmRSS MiB" "VmHWM MiB" "open fds"
    for run in mem_keepalive mem_close; do
        if [[ $run == mem_keepalive ]]; then label="nginx keep-alive :$UP_TLS"; else label="nginx no keep-alive :$UP_TLS_CLOSE"; fi
        for p in $TLS_MEM_POINTS; do
            printf "    %-28s%8s%10s%10s%10s\n" "$label" "$p" "$(fnum "%.1f" "${TLSR[mem/$run/$p/rss]:-}")" \
                "$(fnum "%.1f" "${TLSR[mem/$run/$p/hwm]:-}")" "${TLSR[mem/$run/$p/fds]:-n/a}"
            label=""
        done
        if [[ -n ${TLSR[mem_plateau/$run]:-} ]]; then
            printf "    %-28sVmRSS +%s MiB over the first %s hosts, +%s MiB over the rest: plateau %s\n" "" \
                "${TLSR[mem_growth_first/$run]}" "$(awk '{ print $(NF - 1) }' <<<"$TLS_MEM_POINTS")" \
                "${TLSR[mem_growth_last/$run]}" "${TLSR[mem_plateau/$run]}"
        fi
    done
}

json_list() { # json_list "1 - 3" -> [1, null, 3]
    local v out="" sep=""
    for v in $1; do out+="$sep$(json_num "${v#-}")"; sep=", "; done
    printf '[%s]' "$out"
}

json_bool() { case $1 in yes) printf 'true' ;; no) printf 'false' ;; *) printf 'null' ;; esac; }

# json_tls: the "tls_interception" member of latest.json
json_tls() {
    local run p rss hwm fds
    printf '  "tls_interception": {\n'
    printf '    "measured": %s,\n' "$(if [[ -z $TLS_DOWN ]]; then printf true; else json_str "$TLS_DOWN"; fi)"
    printf '    "proxy_port": %s, "requests": %s, "parallel_connections": %s, "http_version": "1.1", "repeat": %s,\n' \
        "${TLS_PORT[mitm]}" "$TLS_REQUESTS" "$TLS_PARALLEL" "$REPEAT"
    printf '    "small_https_rps": {"intercepted": %s, "tollgate_plain_connect": %s, "squid_connect": %s, "tinyproxy_connect": %s, "direct": %s},\n' \
        "$(json_num "${TLSR[rps_mitm]:-}")" "$(json_num "${RES[tls_small_rps/tollgate]:-}")" \
        "$(json_num "${RES[tls_small_rps/squid]:-}")" "$(json_num "${RES[tls_small_rps/tinyproxy]:-}")" \
        "$(json_num "${RES[tls_small_rps/direct]:-}")"
    printf '    "small_https_rps_runs": {"intercepted": %s, "tollgate_plain_connect": %s, "squid_connect": %s, "tinyproxy_connect": %s, "direct": %s},\n' \
        "$(json_list "${TLSR[runs/mitm]:-}")" "$(json_list "${TLSR[runs/tollgate]:-}")" "$(json_list "${TLSR[runs/squid]:-}")" \
        "$(json_list "${TLSR[runs/tinyproxy]:-}")" "$(json_list "${TLSR[runs/direct]:-}")"
    printf '    "first_response_after_handshake_ms": {"intercepted": %s, "tollgate_plain_connect": %s, "squid_connect": %s, "tinyproxy_connect": %s, "direct": %s},\n' \
        "$(json_num "${TLSR[first/mitm]:-}")" "$(json_num "${TLSR[first/tollgate]:-}")" "$(json_num "${TLSR[first/squid]:-}")" \
        "$(json_num "${TLSR[first/tinyproxy]:-}")" "$(json_num "${TLSR[first/direct]:-}")"
    printf '    "intercepted_connections": %s,\n' "$(json_num "${TLSR[conns_mitm]:-}")"
    printf '    "ratio_intercepted_to_plain_connect": %s,\n' "$(json_num "${TLSR[ratio]:-}")"
    printf '    "handshake_ms": {"hosts": %s, "first_median": %s, "later_median": %s, "first_minus_later_median": %s, "plain_connect_median": %s,\n' \
        "$TLS_MINT_HOSTS" "$(json_num "${TLSR[hs_first]:-}")" "$(json_num "${TLSR[hs_later]:-}")" \
        "$(json_num "${TLSR[hs_diff]:-}")" "$(json_num "${TLSR[hs_plain]:-}")"
    printf '      "first": %s,\n      "later": %s,\n      "plain_connect": %s},\n' \
        "$(json_list "${TLSR[hs_first_list]:-}")" "$(json_list "${TLSR[hs_later_list]:-}")" "$(json_list "${TLSR[hs_plain_list]:-}")"
    printf '    "memory": {"leaf_cache_hosts": 1024, "hosts": %s' "$(json_list "$TLS_MEM_POINTS")"
    for run in mem_keepalive mem_close; do
        rss="" hwm="" fds=""
        for p in $TLS_MEM_POINTS; do
            rss+="${TLSR[mem/$run/$p/rss]:--} "; hwm+="${TLSR[mem/$run/$p/hwm]:--} "; fds+="${TLSR[mem/$run/$p/fds]:--} "
        done
        [[ $run == mem_keepalive ]] && p=$UP_TLS || p=$UP_TLS_CLOSE
        printf ',\n      "%s": {"upstream_port": %s, "vmrss_mib": %s, "vmhwm_mib": %s, "open_fds": %s, "all_200": %s, "growth_first_mib": %s, "growth_last_mib": %s, "plateau": %s}' \
            "${run#mem_}" "$p" "$(json_list "$rss")" "$(json_list "$hwm")" "$(json_list "$fds")" \
            "$(if [[ -z $TLS_MEM_POINTS || -n ${TLSR[mem_failed/$run]:-} ]]; then printf false; else printf true; fi)" \
            "$(json_num "${TLSR[mem_growth_first/$run]:-}")" "$(json_num "${TLSR[mem_growth_last/$run]:-}")" \
            "$(json_bool "${TLSR[mem_plateau/$run]:-}")"
    done
    printf '}\n  },\n'
}

# json_proxy REV: the proxy sections' members of latest.json
json_proxy() {
    local first m t sep rev=$1
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
    printf ', "upstream_tls_no_keepalive": %s' "$UP_TLS_CLOSE"
    for t in mitm mem_keepalive mem_close; do printf ', "tollgate_%s": %s' "$t" "${TLS_PORT[$t]}"; done
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
    for m in plain_http_mbps connect_mbps small_rps tls_small_rps; do
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
    for m in plain_http_mbps connect_mbps small_rps tls_small_rps rss_hwm_mib; do
        printf '%s    "%s": {"squid": %s, "tinyproxy": %s}' "$sep" "$m" \
            "$(json_num "$(ratio "${RES[$m/tollgate]:-}" "${RES[$m/squid]:-}")")" \
            "$(json_num "$(ratio "${RES[$m/tollgate]:-}" "${RES[$m/tinyproxy]:-}")")"
        sep=$',\n'
    done
    printf '\n  },\n'
    json_tls
}

# json_sandbox REV: the "sandbox_startup" member of latest.json
json_sandbox() {
    local name first=1
    printf '  "sandbox_startup": {\n'
    printf '    "measured": %s,\n' "$(if [[ -z $SBX_DOWN ]]; then printf true; else json_str "$SBX_DOWN"; fi)"
    printf '    "tool": "bench/interleave.py", "warmup": %s, "runs": %s, "unit": "ms", "cpu_busy_pct_before": %s,\n' \
        "$SBX_WARMUP" "$SBX_RUNS" "$(json_num "${SBX[busy]:-}")"
    printf '    "versions": {"tollgate": %s, "bwrap": %s, "unshare": %s, "python3": %s},\n' \
        "$(json_str "$1")" \
        "$(json_str "$(bwrap --version 2>/dev/null | awk '{ print $NF }')")" \
        "$(json_str "$(unshare --version 2>/dev/null | awk '{ print $NF }')")" \
        "$(json_str "$(python3 --version 2>/dev/null | awk '{ print $NF }')")"
    printf '    "commands": {'
    for name in "${SBX_NAMES[@]}"; do
        ((first)) || printf ', '; first=0
        printf '\n      "%s": {"command": %s, "measured": %s, "mean": %s, "stddev": %s, "median": %s, "min": %s, "max": %s, "user": %s, "system": %s}' \
            "$name" "$(json_str "${SBX_CMD[$name]:-}")" \
            "$(if [[ -n ${SBX[fail/$name]:-} ]]; then json_str "${SBX[fail/$name]}"; elif [[ -n ${SBX[mean/$name]:-} ]]; then printf true; else printf false; fi)" \
            "$(json_num "${SBX[mean/$name]:-}")" "$(json_num "${SBX[stddev/$name]:-}")" "$(json_num "${SBX[median/$name]:-}")" \
            "$(json_num "${SBX[min/$name]:-}")" "$(json_num "${SBX[max/$name]:-}")" \
            "$(json_num "${SBX[user/$name]:-}")" "$(json_num "${SBX[system/$name]:-}")"
    done
    printf '\n    },\n'
    printf '    "ratio_tollgate_to_bwrap": {"median": %s, "mean": %s, "max": %s, "result": "%s"},\n' \
        "$(json_num "${SBX[ratio]:-}")" "$(json_num "${SBX[ratio_mean]:-}")" "$SBX_TARGET" "${SBX[check]:-n/a}"
    printf '    "runs_export": %s\n' "$(if [[ -n ${SBX[export]:-} ]]; then json_str "${SBX[export]}"; else printf null; fi)"
    printf '  },\n'
}

write_json() {
    local dir=$BENCH_DIR/results f first sep n rev
    mkdir -p "$dir"
    # a partial run (BENCH_ONLY) gets files of its own, so it never
    # replaces the last full run's latest.json
    f=$dir/latest${ONLY:+-$ONLY}.json
    rev=$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo "no commit")
    {
        printf '{\n  "schema": 1,\n'
        printf '  "sections": [%s],\n' "$(
            if want_proxy; then printf '"proxy"'; [[ $TLS_ON == 1 ]] && printf ', "tls_interception"'; fi
            if want_proxy && want_sandbox; then printf ', '; fi
            if want_sandbox; then printf '"sandbox_startup"'; fi)"
        printf '  "date": "%s",\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        printf '  "host": {"cpus": %s, "kernel": %s, "mem_mib": %s, "cpu_busy_pct_before": %s},\n' \
            "$(nproc)" "$(json_str "$(uname -r)")" "$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 }' /proc/meminfo)" \
            "$(json_num "$BUSY_PCT")"
        if want_proxy; then json_proxy "$rev"; fi
        if want_sandbox; then json_sandbox "$rev"; fi
        printf '  "targets": [\n'
        sep=""
        if want_proxy; then
            printf '    {"name": "CONNECT >= 0.9x direct", "ratio": %s, "min": 0.9, "result": "%s"},\n' "$(json_num "$1")" "$4"
            printf '    {"name": "plain HTTP >= 1.5x squid", "ratio": %s, "min": 1.5, "result": "%s"},\n' "$(json_num "$2")" "$5"
            printf '    {"name": "small req/s >= 2x squid", "ratio": %s, "min": 2, "result": "%s"},\n' "$(json_num "$3")" "$6"
            printf '    {"name": "intercepted HTTPS req/s >= 0.5x plain CONNECT", "ratio": %s, "min": 0.5, "result": "%s"}' "$(json_num "$7")" "$8"
            sep=$',\n'
        fi
        if want_sandbox; then
            printf '%s    {"name": "sandbox start-up <= %sx bwrap (median)", "ratio": %s, "max": %s, "result": "%s"}' \
                "$sep" "$SBX_TARGET" "$(json_num "${SBX[ratio]:-}")" "$SBX_TARGET" "${SBX[check]:-n/a}"
        fi
        printf '\n  ],\n  "notes": ['
        first=1
        for n in "${NOTES[@]}"; do ((first)) || printf ', '; first=0; json_str "$n"; done
        printf ']\n}\n'
    } >"$f.tmp"
    mv "$f.tmp" "$f"
    cp "$f" "$dir/$(date -u +%Y%m%dT%H%M%SZ)${ONLY:+-$ONLY}.json"
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
    if want_proxy; then
        start_upstream
        start_tollgate
        start_squid
        start_tinyproxy
        start_tollgate_tls
        smoke_test
        busy_check
        measure_throughput plain_http_mbps "http://$HOST:$UP_HTTP/large"
        measure_throughput connect_mbps "https://$HOST:$UP_TLS/large"
        measure_rate
        measure_rss
        # later sections go here (each fills RES[...] for its own def_metric keys)
        measure_tls_rate
        measure_tls_handshake
        measure_tls_memory
    fi
    # BENCH_ONLY=sandbox runs only this; it needs no server of the above
    measure_sandbox
    report
}

main "$@"
