// The room's messages as state, and their rendering into three columns:
// All (in order), Medium priority and High priority (most votes first).
// Every user-supplied string goes into the page through textContent, never as HTML.

const TIME = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit" });

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export class RoomView {
  // columns: {all, medium, high} list elements (any may be null);
  // actions(msg) -> extra buttons for a card (the host view's moderation).
  constructor({ columns, onVote, actions = null, highFilter = null }) {
    this.columns = columns;
    this.onVote = onVote;
    this.actions = actions;
    this.highFilter = highFilter;
    this.messages = new Map(); // chatId -> message payload
    this.voted = new Set();
    this.cards = new Map(); // `${column}:${chatId}` -> {node, version}
    this.scheduled = false;
  }

  reset() {
    this.messages.clear();
    this.voted.clear();
    this.cards.clear();
    this.render();
  }

  // ROOM_HISTORY: with recovered=false (or a first join) everything is replaced;
  // otherwise messages above fromOffset are replaced and older ones kept.
  applyHistory(history) {
    if (history.recovered !== true) this.reset();
    for (const [id, m] of this.messages) if (m.offset > history.fromOffset) this.messages.delete(id);
    for (const m of history.messages) this.messages.set(m.chatId, m);
    for (const id of history.votedChatIds) this.voted.add(id);
    this.schedule();
  }

  // The message events every view handles the same way; false for any other type.
  apply({ type, payload }) {
    if (type === "ADD_CHAT") this.add(payload);
    else if (type === "UPDATE_CHAT") this.update(payload);
    else if (type === "CHAT_DELETED") this.remove(payload.chatId);
    else return false;
    return true;
  }

  add(chat) {
    this.messages.set(chat.chatId, chat);
    this.schedule();
  }

  update(change) {
    const m = this.messages.get(change.chatId);
    if (!m) return;
    this.messages.set(change.chatId, { ...m, ...change });
    this.schedule();
  }

  remove(chatId) {
    this.messages.delete(chatId);
    this.voted.delete(chatId);
    this.schedule();
  }

  toggleVote(chatId) {
    const voted = this.voted.has(chatId);
    if (voted) this.voted.delete(chatId);
    else this.voted.add(chatId);
    this.schedule();
    return !voted;
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => {
      this.scheduled = false;
      this.render();
    });
  }

  render() {
    const all = [...this.messages.values()].sort((a, b) => a.offset - b.offset);
    const byVotes = (a, b) => b.upvotes - a.upvotes || a.offset - b.offset;
    const lists = {
      all,
      medium: all.filter((m) => m.priority === "medium").sort(byVotes),
      high: all.filter((m) => m.priority === "high" && (!this.highFilter || this.highFilter(m))).sort(byVotes),
    };
    for (const [column, list] of Object.entries(lists)) {
      const container = this.columns[column];
      if (!container) continue;
      container.replaceChildren(...list.map((m) => this.#card(column, m)));
      if (!list.length) container.append(el("li", "empty", "Nothing here yet."));
    }
  }

  #card(column, m) {
    const key = `${column}:${m.chatId}`;
    const version = `${m.upvotes}|${m.answered}|${m.priority}|${this.voted.has(m.chatId)}`;
    const cached = this.cards.get(key);
    if (cached && cached.version === version) return cached.node;
    const node = el("li", `message priority-${m.priority}${m.answered ? " answered" : ""}`);
    node.dataset.chatId = m.chatId;
    node.dataset.offset = String(m.offset);
    const head = el("div", "meta");
    head.append(el("span", "author", m.name), el("time", "time", TIME.format(new Date(m.createdAt))));
    if (m.answered) head.append(el("span", "badge answered-badge", "Answered"));
    const text = el("p", "text", m.message);
    const foot = el("div", "actions");
    const voted = this.voted.has(m.chatId);
    const vote = el("button", "vote", `▲ ${m.upvotes}`);
    vote.type = "button";
    vote.setAttribute("aria-pressed", String(voted));
    vote.setAttribute("aria-label", `${voted ? "Remove your vote" : "Vote"} (${m.upvotes} votes)`);
    vote.addEventListener("click", () => this.onVote(m.chatId));
    foot.append(vote);
    if (this.actions) foot.append(...this.actions(m));
    node.append(head, text, foot);
    this.cards.set(key, { node, version });
    return node;
  }
}

// Readable notices for the server's ERROR codes.
const READABLE = {
  cooldown: "Slow mode is on: wait a moment before sending again.",
  room_closed: "This room is closed: you can read, not post or vote.",
  room_not_started: "This room has not started yet.",
  muted: "The host has muted you in this room for a while.",
  message_too_long: "That message is too long.",
  message_empty: "Type a message first.",
  room_not_found: "There is no such room.",
  forbidden: "Only the host can do that.",
  unauthorized: "That admin token is not valid.",
  overloaded: "The server is busy; try again in a moment.",
};

export function readableError(payload) {
  const base = READABLE[payload.code] || payload.message || "Something went wrong.";
  if (payload.code === "room_not_started" && payload.startTime) {
    return `${base} It starts at ${new Date(payload.startTime).toLocaleString()}.`;
  }
  return base;
}

export function notify(container, text, kind = "error") {
  const note = el("div", `notice ${kind}`);
  note.append(el("span", "", text));
  const close = el("button", "close", "×");
  close.type = "button";
  close.setAttribute("aria-label", "Dismiss");
  close.addEventListener("click", () => note.remove());
  note.append(close);
  container.append(note);
  setTimeout(() => note.remove(), 8000);
}

// "open", "not_started" or "closed", from the room's fields and this browser's clock.
export function roomState(room) {
  if (!room.isOpen) return "closed";
  if (room.startTime && Date.now() < Date.parse(room.startTime)) return "not_started";
  return "open";
}

export const STATE_TEXT = { open: "Open", not_started: "Not started", closed: "Closed (read-only)" };
