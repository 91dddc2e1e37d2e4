// The host page: create and edit rooms, watch the high-priority queue, moderate.
import { RoomConnection, randomId } from "./connection.js";
import { RoomView, STATE_TEXT, el, notify, readableError, roomState } from "./room-view.js";

const $ = (id) => document.getElementById(id);
const session = window.sessionStorage;
let token = session.getItem("roomcast.adminToken");
let connection = null;
let current = null; // the room being hosted
let editing = null; // room id being edited in the form, or null to create

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json();
  if (!response.ok) throw Object.assign(new Error(data.error?.message || response.statusText), data.error || {});
  return data;
}

function button(text, onClick, className = "") {
  const b = el("button", className, text);
  b.type = "button";
  b.addEventListener("click", onClick);
  return b;
}

const view = new RoomView({
  columns: { all: $("col-all"), high: $("col-high") },
  highFilter: (m) => !m.answered,
  onVote: (chatId) => {
    const voted = view.toggleVote(chatId);
    connection.command(voted ? "UPVOTE_MESSAGE" : "UNVOTE_MESSAGE", { userId: connection.user, roomId: current, chatId });
  },
  actions: (m) => [
    button(m.answered ? "Answered ✓" : "Mark answered", () => moderate("MARK_ANSWERED", { chatId: m.chatId }), "answer"),
    button("Delete", () => {
      if (confirm("Delete this message for everyone?")) moderate("DELETE_CHAT", { chatId: m.chatId });
    }, "danger"),
    button("Mute 5 min", () => moderate("MUTE_USER", { userId: m.userId, seconds: 300 }), "mute"),
  ],
});

function moderate(type, payload) {
  if (!connection.command(type, { roomId: current, ...payload })) notify($("notices"), "Not connected; try again in a moment.");
}

function beep() {
  if (!$("sound").checked) return;
  try {
    const audio = new AudioContext();
    const tone = audio.createOscillator();
    tone.frequency.value = 880;
    tone.connect(audio.destination);
    tone.start();
    tone.stop(audio.currentTime + 0.2);
  } catch {
    /* sound is optional */
  }
}

function alertHost(alert) {
  const banner = $("alert-banner");
  banner.hidden = false;
  banner.replaceChildren(el("strong", "", "High priority: "), el("span", "", `“${alert.message}” — ${alert.name}, ${alert.upvotes} votes`));
  beep();
}

function showRoom(room) {
  $("title").textContent = `Hosting: ${room.name}`;
  const state = roomState(room);
  $("state").hidden = false;
  $("state").textContent = STATE_TEXT[state];
  $("state").className = `badge state-${state}`;
  $("members").hidden = false;
  $("members").textContent = `${room.memberCount} here`;
}

function onEvent(message) {
  if (view.apply(message)) return;
  const { type, payload } = message;
  switch (type) {
    case "ROOM_HISTORY":
      showRoom(payload.room);
      view.applyHistory(payload);
      break;
    case "ADMIN_ALERT":
      alertHost(payload);
      break;
    case "ROOM_UPDATED":
      showRoom(payload.room);
      loadRooms();
      break;
    case "PRESENCE":
    case "USER_JOINED":
    case "USER_LEFT":
      $("members").textContent = `${payload.count} here`;
      break;
    case "USER_MUTED":
      notify($("notices"), `Muted ${payload.userId} until ${new Date(payload.until).toLocaleTimeString()}.`, "info");
      break;
    case "ERROR":
      if (payload.code === "unauthorized") logout();
      notify($("notices"), readableError(payload));
      break;
  }
}

function onStatus(status) {
  $("status").textContent = { connecting: "connecting…", live: "live", reconnecting: "reconnecting…" }[status] || status;
  $("status").className = `status status-${status}`;
}

function host(roomId) {
  if (connection) connection.stop();
  current = roomId;
  view.reset();
  $("live").hidden = false;
  $("alert-banner").hidden = true;
  connection = new RoomConnection({ room: roomId, user: `host-${randomId().slice(0, 8)}`, name: "Host", token, onEvent, onStatus });
  connection.start();
}

function localInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function edit(room) {
  editing = room ? room.roomId : null;
  $("form-title").textContent = room ? `Edit “${room.name}”` : "Create a room";
  $("f-submit").textContent = room ? "Save changes" : "Create room";
  $("f-new").hidden = !room;
  $("f-id").value = room ? room.roomId : "";
  $("f-id").disabled = Boolean(room);
  $("f-name").value = room ? room.name : "";
  $("f-start").value = room ? localInput(room.startTime) : "";
  $("f-open").checked = room ? room.isOpen : true;
  $("f-cooldown").value = room ? room.cooldownSeconds : 0;
  $("f-medium").value = room ? room.mediumThreshold : 3;
  $("f-high").value = room ? room.highThreshold : 10;
}

async function loadRooms() {
  try {
    const { rooms } = await api("GET", "/api/rooms");
    $("rooms").replaceChildren(
      ...rooms.map((room) => {
        const item = el("li", room.roomId === current ? "current" : "");
        item.append(el("span", "room-name", `${room.name} (${room.roomId}) — ${STATE_TEXT[roomState(room)]}, ${room.memberCount} here`));
        item.append(button("Host", () => { host(room.roomId); edit(room); loadRooms(); }));
        item.append(button("Edit", () => edit(room)));
        return item;
      }),
    );
    if (!rooms.length) $("rooms").append(el("li", "empty", "No rooms yet: create one below."));
    const hosted = rooms.find((room) => room.roomId === current);
    if (hosted && editing === null && !$("f-name").value) edit(hosted);
  } catch (error) {
    if (error.code === "forbidden" || error.code === "unauthorized") logout();
    notify($("notices"), readableError(error));
  }
}

async function saveRoom(event) {
  event.preventDefault();
  const start = $("f-start").value;
  const fields = {
    name: $("f-name").value.trim(),
    startTime: start ? new Date(start).toISOString() : null,
    isOpen: $("f-open").checked,
    cooldownSeconds: Number($("f-cooldown").value || 0),
    mediumThreshold: Number($("f-medium").value),
    highThreshold: Number($("f-high").value),
  };
  try {
    if (editing) {
      await api("PATCH", `/api/rooms/${encodeURIComponent(editing)}`, fields);
      notify($("notices"), "Room saved.", "info");
    } else {
      if ($("f-id").value.trim()) fields.roomId = $("f-id").value.trim();
      const room = await api("POST", "/api/rooms", fields);
      notify($("notices"), `Room created. Participants join at ${location.origin}/?room=${room.roomId}`, "info");
      host(room.roomId);
      edit(room);
    }
    loadRooms();
  } catch (error) {
    notify($("notices"), readableError(error));
  }
}

function logout() {
  session.removeItem("roomcast.adminToken");
  token = null;
  $("desk").hidden = true;
  $("login").hidden = false;
}

async function login(value) {
  token = value;
  try {
    await api("GET", "/api/auth");
  } catch (error) {
    token = null;
    session.removeItem("roomcast.adminToken");
    notify($("notices"), error.code === "forbidden" ? "That admin token is not valid." : readableError(error));
    return;
  }
  session.setItem("roomcast.adminToken", value);
  $("login").hidden = true;
  $("desk").hidden = false;
  loadRooms();
  const room = new URLSearchParams(location.search).get("room");
  if (room) host(room);
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  login($("token").value.trim());
});
$("room-form").addEventListener("submit", saveRoom);
$("f-new").addEventListener("click", () => edit(null));

if (token) login(token);
else $("token").focus();
