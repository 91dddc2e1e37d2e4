// A WebSocket to one roomcast room that reconnects and resumes by itself.
//
// - Reconnects with exponential backoff and jitter: the first retry comes within a
//   second, later ones wait up to about 30 s.
// - Rejoins with `since` (the last offset seen) and the history's `epoch`, so the server
//   replays exactly what was missed, or says it cannot (recovered: false).
// - Messages sent while disconnected wait in `pending`, each with a clientMsgId, and go
//   out after the rejoin; the server stores each clientMsgId once, so a retry never
//   posts twice.

const MAX_DELAY_MS = 30_000;
const FIRST_DELAY_MS = 500;

export function randomId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// The room is in the URL too, so a load balancer can send a room's users to one node.
export function socketUrl(room) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws?room=${encodeURIComponent(room)}`;
}

export class RoomConnection {
  constructor({ room, user, name, token = null, onEvent, onStatus }) {
    this.room = room;
    this.user = user;
    this.name = name;
    this.token = token;
    this.onEvent = onEvent;
    this.onStatus = onStatus;
    this.lastOffset = null; // highest offset seen; null before the first history
    this.epoch = null;
    this.pending = new Map(); // clientMsgId -> text, in sending order
    this.attempt = 0;
    this.joined = false;
    this.stopped = false;
    this.ws = null;
  }

  start() {
    this.#open();
  }

  stop() {
    this.stopped = true;
    if (this.ws) this.ws.close(1000, "bye");
  }

  // Post a chat message: sent now if joined, else after the next (re)join.
  sendMessage(text) {
    const id = randomId();
    this.pending.set(id, text);
    if (this.joined) this.#sendChat(id, text);
    return id;
  }

  // Any other command; returns false (and sends nothing) while disconnected.
  command(type, payload) {
    if (!this.joined) return false;
    this.#transmit(type, payload);
    return true;
  }

  #open() {
    this.onStatus(this.lastOffset === null && this.attempt === 0 ? "connecting" : "reconnecting");
    const ws = new WebSocket(socketUrl(this.room), "roomcast.v1");
    this.ws = ws;
    ws.onopen = () => {
      if (this.token) this.#transmit("AUTH", { token: this.token });
      const payload = { name: this.name, userId: this.user, roomId: this.room };
      if (this.lastOffset !== null) {
        payload.since = this.lastOffset;
        payload.epoch = this.epoch;
      }
      this.#transmit("JOIN_ROOM", payload);
    };
    ws.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      this.#receive(message);
    };
    ws.onclose = (event) => {
      this.joined = false;
      if (this.stopped || this.ws !== ws) return;
      this.onStatus("reconnecting", event.code);
      const ceiling = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** this.attempt);
      this.attempt += 1;
      setTimeout(() => this.#open(), ceiling / 2 + Math.random() * (ceiling / 2));
    };
  }

  #receive(message) {
    const { type, payload } = message;
    if (type === "ROOM_HISTORY" && payload.roomId === this.room) {
      this.joined = true;
      this.attempt = 0;
      this.epoch = payload.epoch;
      this.lastOffset = payload.lastOffset;
      this.onStatus("live");
      this.onEvent(message);
      for (const [id, text] of this.pending) this.#sendChat(id, text);
      return;
    }
    if (type === "ADD_CHAT" && payload.roomId === this.room) {
      this.lastOffset = Math.max(this.lastOffset ?? 0, payload.offset);
      if (payload.clientMsgId) this.pending.delete(payload.clientMsgId);
    }
    if (type === "ERROR" && payload.clientMsgId) this.pending.delete(payload.clientMsgId);
    this.onEvent(message);
  }

  #sendChat(id, text) {
    this.#transmit("SEND_MESSAGE", { userId: this.user, roomId: this.room, message: text, clientMsgId: id });
  }

  #transmit(type, payload) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type, payload }));
  }
}
