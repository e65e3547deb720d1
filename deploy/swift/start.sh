#!/usr/bin/env bash
# A single-node OpenStack Swift with its S3 API (s3api) on 127.0.0.1, for tests and local runs.
#
#   deploy/swift/start.sh STATE_DIR [PROXY_PORT]    (or SWIFT_STATE_DIR, SWIFT_PROXY_PORT; port 8080 if unset)
#   deploy/swift/stop.sh STATE_DIR [proxy|object|container|account|memcache ...]
#
# S3: endpoint http://127.0.0.1:PROXY_PORT, access key "test:tester", secret key "testing", region us-east-1,
# path-style addressing (proxy-server.conf: tempauth's user test:tester, key testing).
#
# Renders the config templates beside this script into STATE_DIR/etc; on the first start picks free loopback
# ports for the backend servers and builds the account, container and object rings there (one device,
# STATE_DIR/srv/d1, one replica); starts each server that is not already running (so after
# `stop.sh STATE_DIR proxy` it brings back the proxy alone, same port, data still there); returns once all
# of them answer. The servers: Swift's account, container, object and proxy servers (Debian's packages,
# `make swift-tools`), run through serve.py beside this script so they read STATE_DIR/etc/swift.conf, not
# /etc/swift's; and a memcached (tempauth keeps its tokens there and refuses to work without one).
# They run as the current user; pids in STATE_DIR/run, logs in STATE_DIR/log. STATE_DIR's filesystem needs
# user xattrs (ext4, xfs; Swift keeps object metadata in them).
#
# SWIFT_WATCH_PID=<pid>: a watcher stops every server (stop.sh) once that process is gone, however it ended
# (the test suite passes its own pid, so no server outlives a killed pytest).
# SWIFT_START_TIMEOUT: seconds to wait for the servers to answer (default 30).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${1:-${SWIFT_STATE_DIR:?usage: start.sh STATE_DIR [PROXY_PORT]}}"
PROXY_PORT="${2:-${SWIFT_PROXY_PORT:-8080}}"
TIMEOUT="${SWIFT_START_TIMEOUT:-30}"
SERVERS=(memcache account container object proxy)

for tool in swift-proxy-server swift-object-server swift-container-server swift-account-server memcached; do
    command -v "$tool" >/dev/null || { echo "$tool missing: \`make swift-tools\` installs it (as root)" >&2; exit 3; }
done
# Swift's own interpreter (its scripts' shebang), whatever python comes first on PATH (a venv's has no swift).
read -ra PY <<<"$(sed -n '1s/^#! *//p' "$(command -v swift-proxy-server)")"  # an array: "/usr/bin/env python3"
# eventlet's DNS resolver (dnspython) costs ~0.5 s of imports per process; everything here is an IP address.
export EVENTLET_NO_GREENDNS=yes
mkdir -p "$STATE"
STATE="$(cd "$STATE" && pwd)"
ETC="$STATE/etc"
mkdir -p "$ETC" "$STATE/srv/d1" "$STATE/run" "$STATE/log"

# First start: free loopback ports for memcached and the backend servers, and the rings that hold the
# latter's (2^6 partitions, 1 replica, no minimum hours between moves, the one device d1); kept from then
# on. Built with swift.common.ring.RingBuilder, the library of swift-ring-builder, in one process: the
# 9 swift-ring-builder calls (create, add, rebalance per ring) take seconds of imports.
# `swift-ring-builder STATE_DIR/etc/object.builder` shows a ring.
if [[ ! -f "$ETC/ports" ]]; then
    "${PY[@]}" - "$ETC" >"$ETC/ports.tmp" <<'EOF'
import socket, sys
from swift.common.ring import RingBuilder
socks = {name: socket.socket() for name in ("memcache", "account", "container", "object")}
for name, sock in socks.items():  # all bound at once: different ports
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    print(f"{name}_port={port}")
    if name != "memcache":
        builder = RingBuilder(6, 1, 0)
        builder.add_dev({"region": 1, "zone": 1, "ip": "127.0.0.1", "port": port, "device": "d1", "weight": 100})
        builder.rebalance()
        builder.save(f"{sys.argv[1]}/{name}.builder")
        builder.get_ring().save(f"{sys.argv[1]}/{name}.ring.gz")
EOF
    mv "$ETC/ports.tmp" "$ETC/ports"
fi
declare memcache_port account_port container_port object_port
# shellcheck source=/dev/null
source "$ETC/ports"

render() {  # render TEMPLATE PORT: the template with its @...@ placeholders filled in, into STATE_DIR/etc
    sed -e "s|@PORT@|$2|g" -e "s|@PROXY_PORT@|$PROXY_PORT|g" -e "s|@MEMCACHE_PORT@|$memcache_port|g" \
        -e "s|@USER@|$(id -un)|g" -e "s|@SWIFT_DIR@|$ETC|g" -e "s|@DEVICES@|$STATE/srv|g" "$HERE/$1" >"$ETC/$1"
}
render swift.conf ""
render proxy-server.conf "$PROXY_PORT"
render account-server.conf "$account_port"
render container-server.conf "$container_port"
render object-server.conf "$object_port"

running() {  # running NAME: its pid file names a live process whose command line names "STATE_DIR/etc/NAME"
    local pid
    pid="$(cat "$STATE/run/$1.pid" 2>/dev/null)" || return 1
    grep -qaF "$ETC/$1" "/proc/$pid/cmdline" 2>/dev/null  # an exited one's zombie has an empty command line
}

gone() {  # gone PID: none (a pid file stop.sh removed), no such process, or a zombie (not every init reaps)
    [[ -z $1 || ! -e /proc/$1 ]] || grep -qs "^State:.Z" "/proc/$1/status"
}

for name in "${SERVERS[@]}"; do
    running "$name" && continue
    if [[ $name == memcache ]]; then
        # argv[0] names the state directory, for running() and stop.sh; -u: memcached refuses root without it.
        (exec -a "$ETC/memcached" memcached -l 127.0.0.1 -p "$memcache_port" -U 0 -m 16 -u "$(id -un)" \
            </dev/null >>"$STATE/log/$name.log" 2>&1) &
    else
        "${PY[@]}" "$HERE/serve.py" "$name-server" "$ETC/$name-server.conf" </dev/null >>"$STATE/log/$name.log" 2>&1 &
    fi
    echo $! >"$STATE/run/$name.pid"
done

if [[ -n "${SWIFT_WATCH_PID:-}" ]] && ! running watch; then
    # Its own session: a signal to the caller's process group leaves it, and the servers, alone. The loop is
    # gone()'s test, on one line (readable in ps); the last argument, unused, names it for running().
    # shellcheck disable=SC2016  # $0..$2: the watcher's own arguments
    watcher='while [[ -e /proc/$0 ]] && ! grep -qs "^State:.Z" "/proc/$0/status"; do sleep 1; done'
    # shellcheck disable=SC2016
    watcher+='; echo "$(date) $0 gone"; exec "$1" "$2"'
    setsid bash -c "$watcher" "$SWIFT_WATCH_PID" "$HERE/stop.sh" "$STATE" "$ETC/watch" \
        </dev/null >>"$STATE/log/watch.log" 2>&1 &
    echo $! >"$STATE/run/watch.pid"
fi

answers() (  # answers PORT [PATH]: something accepts connections there (an HTTP 200 for PATH if given)
    status=""
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    if [[ -n "${2:-}" ]]; then
        printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
        read -r -t 2 _ status _ <&3 || status=""
    fi
    [[ -z "${2:-}" || "$status" == 200 ]]
)

deadline=$((SECONDS + TIMEOUT))
while :; do
    for name in "${SERVERS[@]}"; do
        if gone "$(cat "$STATE/run/$name.pid" 2>/dev/null)"; then  # not running(): it may not have exec'd yet
            echo "swift: $name exited; the end of $STATE/log/$name.log:" >&2
            tail -n 30 "$STATE/log/$name.log" >&2
            exit 1
        fi
    done
    ready=1
    for port in "$memcache_port" "$account_port" "$container_port" "$object_port"; do
        answers "$port" 2>/dev/null || ready=0
    done
    answers "$PROXY_PORT" /healthcheck 2>/dev/null || ready=0
    [[ $ready -eq 1 ]] && break
    if ((SECONDS >= deadline)); then
        echo "swift did not answer within ${TIMEOUT}s (logs: $STATE/log)" >&2
        exit 1
    fi
    sleep 0.1
done
echo "swift s3api on http://127.0.0.1:$PROXY_PORT (state: $STATE)"
