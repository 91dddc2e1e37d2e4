#!/usr/bin/env bash
# Fan-out before and after a change, with the Node `ws` generator (bench/node_fanout.py):
# servers of two checkouts alternate on CPU 0, the generator runs on CPU 1.
#
#   git worktree add /tmp/before COMMIT
#   bench/before_after_fanout.sh /tmp/before memory:// 450 3
#   bench/before_after_fanout.sh /tmp/before sqlite:///roomcast.db 100 3
#
# A = the server of BEFORE/src, B = this checkout's. Reports: bench/results/nf-*.json.
# Loopback only; each server it starts it stops by pid (each in a folder of its own).
set -eu
before="$1"; store="$2"; rate="$3"; rounds="${4:-2}"
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
for round in $(seq 1 "$rounds"); do
  for side in A B; do
    if [ "$side" = A ]; then src="$before/src"; else src="$here/src"; fi
    port=$("$py" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
    work=$(mktemp -d)
    (cd "$work" && exec env PYTHONPATH="$src" taskset -c 0 "$py" -m roomcast serve --port "$port" \
      --store "$store" --max-message-rate 1e9 --message-burst 1000000000 \
      --max-connections-per-ip 1000000 --presence-broadcast-max 10 --log-level warning \
      >/dev/null 2>&1) &
    server=$!
    for _ in $(seq 100); do
      "$py" -c "import socket; socket.create_connection(('127.0.0.1', $port)).close()" 2>/dev/null && break
      sleep 0.1
    done
    taskset -c 1 "$py" "$here/bench/node_fanout.py" --port "$port" --receivers 1000 --rate "$rate" \
      --duration 6 --warmup 2 --gen-cpus 1 --server-pid "$server" \
      --out "$here/bench/results/nf-$side-$round-$rate.json" | tail -3
    kill "$server"; wait "$server" 2>/dev/null || true
    rm -rf "$work"
  done
done
