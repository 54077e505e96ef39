#!/usr/bin/env bash
# Runs every benchmark of redis-entraid and of the redis crate's entra-id feature on
# this machine, and writes BENCHMARKS.md at the repository root.
#
#   bash benches/run.sh
#
# It takes about 30 minutes on 2 cores. It installs what it needs with apt-get when
# missing (hyperfine; libssl-dev and pkg-config for azure_identity's OpenSSL), starts
# its own redis-server and mock token endpoints on 127.0.0.1, and sends nothing
# anywhere else. Intermediate results go to target/bench-run/.
#
# Settings, from the environment:
#   BUILD_RUNS    clean release builds per program (default 3)
#   IDLE_WINDOW   seconds over which idle programs are observed (default 60)
#   COLD_ROUNDS   hyperfine rounds for the cold start, 10 runs each (default 5)
#   FANOUT_RENEWALS renewals observed for the redis crate's fan-out (default 15)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=$ROOT/target/bench-run
BUILD_RUNS=${BUILD_RUNS:-3}
IDLE_WINDOW=${IDLE_WINDOW:-60}
COLD_ROUNDS=${COLD_ROUNDS:-5}
FANOUT_RENEWALS=${FANOUT_RENEWALS:-15}
MINIMAL=$ROOT/benches/minimal
COMPARISON=$ROOT/benches/redis-entra-id
FEATURE_SETS=(core blocking smol async-std)
OUR_RUNNING_SETS=(blocking smol async-std)

step() { printf '\n==> %s\n' "$*"; }

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT

# --- Tools ---------------------------------------------------------------------------

step "Install missing tools"
missing=()
command -v hyperfine >/dev/null || missing+=(hyperfine)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v openssl >/dev/null || missing+=(openssl)
command -v redis-server >/dev/null || missing+=(redis-server)
if ((${#missing[@]})); then
    echo "installing ${missing[*]}"
    # Keeps Debian's redis-server package from starting a service on port 6379.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        REMOVE_POLICY=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}"
    [[ -n ${REMOVE_POLICY:-} ]] && rm -f /usr/sbin/policy-rc.d
fi

# 1,000 connections need one socket each in the benchmark and in redis-server.
hard=$(ulimit -Hn)
if [[ $hard == unlimited || $hard -ge 8192 ]]; then ulimit -n 8192; else ulimit -n "$hard"; fi
echo "open files limit: $(ulimit -n)"

rm -rf "$OUT"
mkdir -p "$OUT"/{results,bin,logs,idle,cold}
export BENCH_RESULTS_DIR=$OUT/results

# --- Machine and load ------------------------------------------------------------------

step "Record the machine"
{
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo '+changes')"
    echo "nproc=$(nproc)"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "memory=$(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
    echo "kernel=$(uname -r)"
    echo "rustc=$(rustc --version)"
    echo "redis_server=$(redis-server --version | awk '{print $3}' | sed 's/v=//')"
    echo "python=$(python3 --version)"
    echo "hyperfine=$(hyperfine --version 2>/dev/null || echo missing)"
    echo "openssl=$(openssl version)"
} >"$OUT/machine.env"
cat "$OUT/machine.env"

# Samples the load average, the CPU time of processes outside this run's session and
# the hypervisor's steal time every 5 s, so the report can tell whether other work
# shared the cores.
python3 "$ROOT/benches/report.py" load "$(ps -o sid= $$ | tr -d ' ')" >"$OUT/load.jsonl" &
PIDS+=($!)

# --- Dependencies, fetched before any timing ----------------------------------------

step "Fetch dependencies"
cargo fetch --locked
cargo fetch --locked --manifest-path "$MINIMAL/Cargo.toml"
cargo fetch --locked --manifest-path "$COMPARISON/Cargo.toml"

# --- Benchmarks with cargo bench: (1), (2), (3) and (7) ----------------------------

step "cargo bench (cached credentials, overhead, fan-out, memory)"
BENCHES=(--bench credentials --bench overhead --bench fanout --bench memory)
cargo bench --locked --features smol "${BENCHES[@]}" --no-run
rm -rf target/criterion/get_credentials target/criterion/generation
for bench in credentials overhead fanout memory; do
    cargo bench --locked --features smol --bench "$bench" 2>&1 | tee "$OUT/logs/bench-$bench.log"
done
cp -r target/criterion "$OUT/results/criterion"

# --- Footprint: (6) ------------------------------------------------------------------

step "Crate counts"
count_crates() {
    # Unique name and version pairs; `(*)` marks repeats and `(proc-macro)` a kind.
    cargo tree --locked --offline -e normal --prefix none "$@" |
        sed -e 's/ (\*)//' -e 's/ (proc-macro)//' | awk '{print $1 " " $2}' | sort -u | wc -l
}
for set in "${FEATURE_SETS[@]}"; do
    echo "$set $(count_crates --manifest-path "$MINIMAL/Cargo.toml" --features "$set")"
done >"$OUT/results/crates.txt"
echo "redis-entra-id $(count_crates --manifest-path "$COMPARISON/Cargo.toml")" \
    >>"$OUT/results/crates.txt"
cat "$OUT/results/crates.txt"

step "Clean release builds, $BUILD_RUNS per program, 2 jobs"
build() { # build NAME RUN
    local name=$1 run=$2 dir=$OUT/build-$1-$2 started elapsed
    local -a command
    if [[ $name == redis-entra-id ]]; then
        command=(cargo build --release --locked --offline -j 2 --manifest-path
            "$COMPARISON/Cargo.toml" --bins)
    else
        command=(cargo build --release --locked --offline -j 2 --manifest-path
            "$MINIMAL/Cargo.toml" --features "$name")
    fi
    # The first build of each program records which crates took longest.
    ((run == 1)) && command+=(--timings)
    started=$(date +%s%N)
    CARGO_TARGET_DIR=$dir "${command[@]}" >"$OUT/logs/build-$name-$run.log" 2>&1
    elapsed=$(($(date +%s%N) - started))
    echo "$name $run $((elapsed / 1000000))" | tee -a "$OUT/results/builds.txt"
    if [[ $name == redis-entra-id ]]; then
        cp "$dir/release/minimal" "$OUT/bin/redis-entra-id"
        cp "$dir/release/scenarios" "$OUT/bin/redis-entra-id-scenarios"
    else
        cp "$dir/release/redis-entraid-minimal" "$OUT/bin/$name"
    fi
    if ((run == 1)); then
        cp "$dir/cargo-timings/cargo-timing.html" "$OUT/results/timings-$name.html"
    fi
    rm -rf "$dir"
}
for run in $(seq "$BUILD_RUNS"); do
    # Alternates the order, so a burst of load from elsewhere does not always hit
    # the same program.
    if ((run % 2)); then
        order=("${FEATURE_SETS[@]}" redis-entra-id)
    else
        order=(redis-entra-id "${FEATURE_SETS[@]}")
    fi
    for name in "${order[@]}"; do build "$name" "$run"; done
done

step "Stripped binary sizes"
for name in "${FEATURE_SETS[@]}" redis-entra-id; do
    strip -o "$OUT/bin/$name.stripped" "$OUT/bin/$name"
    echo "$name $(stat -c %s "$OUT/bin/$name") $(stat -c %s "$OUT/bin/$name.stripped")"
done | tee "$OUT/results/sizes.txt"
# Shared libraries other than the C runtime's, which a binary needs beside itself.
for name in "${FEATURE_SETS[@]}" redis-entra-id; do
    libraries=$(ldd "$OUT/bin/$name" | awk '$3 ~ /^\// {print $3}' |
        grep -vE '/(libc|libm|libgcc_s|libpthread|libdl|librt|ld-linux[^/]*)\.so' || true)
    bytes=0
    for library in $libraries; do
        bytes=$((bytes + $(stat -L -c %s "$library")))
    done
    echo "$name $bytes $(echo "$libraries" | xargs -r -n1 basename | tr '\n' ' ')"
done | tee "$OUT/results/shared-libraries.txt"

# --- Servers for the process-level measurements ------------------------------------

step "Start redis-server and the mock endpoints on 127.0.0.1"
REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --maxclients 4096 --logfile "$OUT/logs/redis.log" &
PIDS+=($!)
for _ in $(seq 100); do
    redis-cli -p "$REDIS_PORT" PING >/dev/null 2>&1 && break
    sleep 0.1
done
redis-cli -p "$REDIS_PORT" ACL SETUSER 11111111-2222-3333-4444-555555555555 \
    on nopass '~*' '&*' '+@all' >/dev/null
export REDIS_URL=redis://127.0.0.1:$REDIS_PORT

# A self-signed certificate for 127.0.0.1, trusted only by the comparison programs,
# through SSL_CERT_FILE in their environment.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$OUT/mock-key.pem" -out "$OUT/mock-cert.pem" 2>/dev/null

start_mock() { # start_mock NAME ARGS...: sets MOCK_PORT
    local name=$1
    shift
    python3 "$ROOT/benches/mock_token_endpoint.py" --log "$OUT/logs/$name.tokens" "$@" \
        >"$OUT/logs/$name.port" 2>"$OUT/logs/$name.err" &
    PIDS+=($!)
    for _ in $(seq 100); do
        [[ -s $OUT/logs/$name.port ]] && break
        sleep 0.1
    done
    MOCK_PORT=$(awk '{print $2}' "$OUT/logs/$name.port")
}
start_mock http --lifetime 3600
HTTP_AUTHORITY=http://127.0.0.1:$MOCK_PORT
start_mock https --lifetime 3600 --tls-cert "$OUT/mock-cert.pem" --tls-key "$OUT/mock-key.pem"
HTTPS_AUTHORITY=https://127.0.0.1:$MOCK_PORT
# The redis crate's provider renews 240 s before expiry and cannot be forced, so
# 245-second tokens make it renew every 5 s.
start_mock fanout --lifetime 245 --tls-cert "$OUT/mock-cert.pem" --tls-key "$OUT/mock-key.pem"
FANOUT_AUTHORITY=https://127.0.0.1:$MOCK_PORT

run_env() { # run_env NAME: the environment for one program, as `env` arguments
    if [[ $1 == redis-entra-id ]]; then
        echo "MOCK_AUTHORITY=$HTTPS_AUTHORITY SSL_CERT_FILE=$OUT/mock-cert.pem \
REDIS_URL=$REDIS_URL IDLE_SECONDS=0"
    else
        echo "MOCK_AUTHORITY=$HTTP_AUTHORITY REDIS_URL=$REDIS_URL IDLE_SECONDS=0"
    fi
}
for name in "${OUR_RUNNING_SETS[@]}" redis-entra-id; do
    # shellcheck disable=SC2046 # run_env prints several arguments on purpose.
    env $(run_env "$name") "$OUT/bin/$name" | grep -q authenticated ||
        { echo "$name did not authenticate" >&2; exit 1; }
done

# --- Idle cost: (4) ------------------------------------------------------------------

step "Idle cost: ${IDLE_WINDOW} s with one-hour tokens, all programs at once"
idle_pids=()
for name in "${OUR_RUNNING_SETS[@]}" redis-entra-id; do
    # shellcheck disable=SC2046
    env $(run_env "$name") IDLE_SECONDS=$((IDLE_WINDOW + 30)) "$OUT/bin/$name" \
        >"$OUT/idle/$name.out" &
    idle_pids+=("$name:$!")
    PIDS+=($!)
done
for entry in "${idle_pids[@]}"; do
    for _ in $(seq 200); do
        grep -q authenticated "$OUT/idle/${entry%%:*}.out" && break
        sleep 0.1
    done
done
# Lets threads that served the first token request finish or go idle.
sleep 5
python3 "$ROOT/benches/report.py" idle "$IDLE_WINDOW" "${idle_pids[@]}" \
    >"$OUT/results/idle.json"
for entry in "${idle_pids[@]}"; do kill "${entry##*:}" 2>/dev/null || true; done

# --- Cold start: (5) -----------------------------------------------------------------

step "Cold start: $COLD_ROUNDS rounds of 10 runs per program"
tokens_before_http=$(wc -l <"$OUT/logs/http.tokens")
tokens_before_https=$(wc -l <"$OUT/logs/https.tokens")
for round in $(seq "$COLD_ROUNDS"); do
    commands=()
    for name in "${OUR_RUNNING_SETS[@]}" redis-entra-id; do
        commands+=(-n "$name" "env $(run_env "$name") $OUT/bin/$name")
    done
    token_url=/00000000-0000-0000-0000-0000000000aa/oauth2/v2.0/token
    commands+=(-n "curl-http" "curl -s -o /dev/null -d x ${HTTP_AUTHORITY}${token_url}")
    commands+=(-n "curl-https" "curl -s -o /dev/null --cacert $OUT/mock-cert.pem -d x \
${HTTPS_AUTHORITY}${token_url}")
    hyperfine -N --warmup 2 --runs 10 --export-json "$OUT/cold/round-$round.json" \
        "${commands[@]}" >"$OUT/logs/hyperfine-$round.log"
done
# Every run, warm-ups included, starts one process that should request one token; the
# curl rows request one each too. Three of our programs and one curl use the http mock.
starts=$((COLD_ROUNDS * 12))
{
    echo "http $(($(wc -l <"$OUT/logs/http.tokens") - tokens_before_http)) $((starts * 4))"
    echo "https $(($(wc -l <"$OUT/logs/https.tokens") - tokens_before_https)) $((starts * 2))"
} >"$OUT/results/cold-token-requests.txt"

# --- The redis crate's memory and fan-out --------------------------------------------

step "redis crate: memory with 100 connections, 7 processes"
for _ in $(seq 7); do
    # shellcheck disable=SC2046
    env $(run_env redis-entra-id) "$OUT/bin/redis-entra-id-scenarios" memory
done | tee "$OUT/results/redis-entra-id-memory.txt"

step "redis crate: fan-out to 1,000 connections over $FANOUT_RENEWALS renewals"
redis-cli -p "$REDIS_PORT" CONFIG RESETSTAT >/dev/null
MOCK_AUTHORITY=$FANOUT_AUTHORITY SSL_CERT_FILE=$OUT/mock-cert.pem \
    MOCK_LOG=$OUT/logs/fanout.tokens \
    "$OUT/bin/redis-entra-id-scenarios" fanout "$FANOUT_RENEWALS" |
    tee "$OUT/results/redis-entra-id-fanout.txt"

# --- Report ----------------------------------------------------------------------------

step "Write BENCHMARKS.md"
cleanup
python3 "$ROOT/benches/report.py" render "$OUT" >"$ROOT/BENCHMARKS.md"
echo "wrote $ROOT/BENCHMARKS.md"
