// Fan-out load generator on Node's `ws` (faster per frame than any Python client):
// one sender at a fixed rate, N receivers in one room, all on 127.0.0.1.
// Prints "WINDOW_START <ms> <ticks> <own ticks>" and "WINDOW_END ..." when the measured
// window opens and closes: wall time, the CPU ticks of the --pids processes (the
// server's) and of this process, read at the very moment counting starts and stops, so
// the deliveries and the CPU belong to the same window even when this process runs
// late; then a JSON line of results.
//
//   node fanout.mjs --ports 8080 --pids 1234 --receivers 1000 --rate 400 --duration 8
import { readFileSync } from "node:fs";
import { WebSocket } from "ws";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => {
    if (arg.startsWith("--")) pairs.push([arg.slice(2), all[i + 1]]);
    return pairs;
  }, []),
);
const ports = String(args.ports ?? "8080").split(",").map(Number);
const receivers = Number(args.receivers ?? 1000);
const rate = Number(args.rate ?? 200);
const duration = Number(args.duration ?? 8);
const warmup = Number(args.warmup ?? 2);
const tail = 1;
const pids = String(args.pids ?? "").split(",").filter(Boolean);

// utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat).
function ticks(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(fields[11]) + Number(fields[12]);
}
const mark = (name) =>
  console.log(`${name} ${Date.now()} ${pids.reduce((sum, pid) => sum + ticks(pid), 0)} ${ticks("self")}`);
const room = args.room ?? "bench-node";
const ack = args.ack ?? "history";
const now = () => process.hrtime.bigint();
const wall = () => BigInt(Date.now()) * 1_000_000n;

function join(ws, user) {
  ws.send(JSON.stringify({ type: "JOIN_ROOM", payload: { name: user, userId: user, roomId: room } }));
}

function connect(port, user) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { perMessageDeflate: false });
    ws.on("error", reject);
    ws.on("open", () => {
      // roomcast and the bare baseline servers answer a join with ROOM_HISTORY; with
      // --ack none (a server that answers nothing) the join is taken as done once sent.
      if (ack === "none") {
        join(ws, user);
        resolve(ws);
      } else {
        ws.once("message", () => resolve(ws));
        join(ws, user);
      }
    });
  });
}

const total = Math.round((warmup + duration + tail) * rate);
const k0 = Math.round(warmup * rate);
const k1 = k0 + Math.round(duration * rate);
const seen = [];
let counting = false;
let windowDeliveries = 0;
const latencies = [];
const marker = Buffer.from('"message":"');

// Every receiver counts its ADD_CHAT frames; one in SAMPLE also reads each frame's
// sequence number and send time (loss, duplicates, latency): parsing every frame would
// make this process, not the server, the bottleneck.
const SAMPLE = Number(args.sample ?? 20);

function onFrame(index, data) {
  if (data[9] !== 0x41 || data[10] !== 0x44) return; // {"type":"AD(D_CHAT)
  if (index % SAMPLE !== 0) {
    if (counting) windowDeliveries += 1;
    return;
  }
  const at = data.indexOf(marker);
  if (at < 0) return;
  const start = at + marker.length;
  const seq = Number(data.toString("latin1", start, start + 8));
  const sent = Number(data.toString("latin1", start + 9, start + 28));
  if (counting) windowDeliveries += 1;
  if (seq >= k0 && seq < k1) {
    seen[index][seq] += 1;
    latencies.push(Date.now() * 1e6 - sent);
  }
}

const conns = [];
for (let i = 0; i < receivers; i += 100) {
  const batch = [];
  for (let j = i; j < Math.min(receivers, i + 100); j++) {
    batch.push(connect(ports[j % ports.length], `n${j}`));
  }
  conns.push(...(await Promise.all(batch)));
}
conns.forEach((ws, index) => {
  seen.push(new Uint8Array(total));
  ws.on("message", (data) => onFrame(index, data));
});
const sender = await connect(ports[0], "node-sender");

const period = 1e9 / rate;
const start = Number(now()) + 2e8;
let maxLag = 0;
for (let k = 0; k < total; k++) {
  const due = start + k * period;
  let wait = (due - Number(now())) / 1e6;
  if (wait > 1) await new Promise((r) => setTimeout(r, wait - 0.5));
  while (Number(now()) < due) await new Promise((r) => setImmediate(r));
  maxLag = Math.max(maxLag, (Number(now()) - due) / 1e6);
  if (k === k0) {
    mark("WINDOW_START");
    counting = true;
  }
  if (k === k1) {
    counting = false;
    mark("WINDOW_END");
  }
  const stamp = `${String(k).padStart(8, "0")} ${String(wall()).padStart(19, "0")}`;
  sender.send(JSON.stringify({
    type: "SEND_MESSAGE",
    payload: { userId: "node-sender", roomId: room, message: `${stamp} ${"x".repeat(60)}` },
  }));
}
await new Promise((r) => setTimeout(r, 2000));
let lost = 0;
let duplicates = 0;
for (const [index, counts] of seen.entries()) {
  if (index % SAMPLE !== 0) continue;
  for (let k = k0; k < k1; k++) {
    if (counts[k] === 0) lost += 1;
    else if (counts[k] > 1) duplicates += counts[k] - 1;
  }
}
latencies.sort((a, b) => a - b);
const pct = (q) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] / 1e6 : 0);
console.log(JSON.stringify({
  receivers, rate, window_deliveries: windowDeliveries, lost, duplicates,
  sampled_receivers: Math.ceil(receivers / SAMPLE),
  latency_ms: { p50: pct(0.5), p99: pct(0.99), max: pct(1) }, sender_max_lag_ms: maxLag,
}));
for (const ws of [...conns, sender]) ws.terminate();
process.exit(0);
