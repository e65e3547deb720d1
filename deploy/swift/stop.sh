#!/usr/bin/env bash
# Stops the Swift servers that deploy/swift/start.sh started in STATE_DIR, by their pid files there.
#
#   deploy/swift/stop.sh STATE_DIR                  every server, and the watcher (SWIFT_WATCH_PID)
#   deploy/swift/stop.sh STATE_DIR proxy [...]      only these (proxy, object, container, account, memcache)
#
# SIGTERM, then SIGKILL after 10 s. A pid is only signalled while its command line still names this state
# directory (no stray kill of a reused pid). The data stays: start.sh STATE_DIR brings the servers back.
set -euo pipefail

STATE="$(cd "${1:?usage: stop.sh STATE_DIR [proxy|object|container|account|memcache ...]}" && pwd)"
shift
names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(proxy object container account memcache watch)

pids=()
for name in "${names[@]}"; do
    pid="$(cat "$STATE/run/$name.pid" 2>/dev/null)" || continue
    rm -f "$STATE/run/$name.pid"
    # The watcher runs this script in its own process at the end (exec): it does not stop itself.
    [[ "$pid" == "$$" ]] && continue
    if grep -qaF "$STATE/" "/proc/$pid/cmdline" 2>/dev/null && kill -TERM "$pid" 2>/dev/null; then
        echo "stop.sh: $name ($pid)"
        pids+=("$pid")
    fi
done

for _ in $(seq 100); do
    alive=()
    for pid in "${pids[@]}"; do
        # A live process of this state directory (an exited one's zombie has an empty command line).
        grep -qaF "$STATE/" "/proc/$pid/cmdline" 2>/dev/null && alive+=("$pid")
    done
    [[ ${#alive[@]} -eq 0 ]] && exit 0
    pids=("${alive[@]}")
    sleep 0.1
done
kill -KILL "${pids[@]}" 2>/dev/null || true
