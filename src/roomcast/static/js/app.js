// The participant page: join a room, read and ask questions, vote.
import { RoomConnection, randomId } from "./connection.js";
import { RoomView, STATE_TEXT, notify, readableError, roomState } from "./room-view.js";

const $ = (id) => document.getElementById(id);
const store = window.localStorage;

let userId = store.getItem("roomcast.userId");
if (!userId) {
  userId = randomId();
  store.setItem("roomcast.userId", userId);
}

let connection = null;
let room = null; // the room object from the server
let cooldownUntil = 0;
let myLastSent = null; // clientMsgId of the message that started the cooldown
const sentTexts = new Map(); // clientMsgId -> text, to give a refused message back

const view = new RoomView({
  columns: { all: $("col-all"), medium: $("col-medium"), high: $("col-high") },
  onVote: (chatId) => {
    const voted = view.toggleVote(chatId);
    const type = voted ? "UPVOTE_MESSAGE" : "UNVOTE_MESSAGE";
    if (!connection.command(type, { userId, roomId: connection.room, chatId })) {
      view.toggleVote(chatId);
      notify($("notices"), "Not connected: your vote was not sent. Try again in a moment.");
    }
  },
});

function showRoom() {
  if (!room) return;
  $("title").textContent = room.name;
  document.title = `${room.name} — roomcast`;
  const state = roomState(room);
  $("state").hidden = false;
  $("state").textContent = STATE_TEXT[state];
  $("state").className = `badge state-${state}`;
  if (state === "not_started") $("state").textContent += ` — starts ${new Date(room.startTime).toLocaleString()}`;
  $("slow").hidden = !(room.cooldownSeconds > 0);
  $("slow").textContent = `Slow mode: ${room.cooldownSeconds} s`;
}

function showMembers(count) {
  $("members").hidden = false;
  $("members").textContent = `${count} ${count === 1 ? "person" : "people"} here`;
}

function onEvent(message) {
  const { type, payload } = message;
  if (view.apply(message)) {
    if (type === "ADD_CHAT" && payload.clientMsgId && payload.clientMsgId === myLastSent && room.cooldownSeconds > 0) {
      cooldownUntil = Date.now() + room.cooldownSeconds * 1000;
    }
    return;
  }
  switch (type) {
    case "ROOM_HISTORY":
      room = payload.room;
      showRoom();
      showMembers(room.memberCount);
      if (payload.recovered === false) {
        notify($("notices"), "Some messages could not be recovered after the reconnect; the room's history was reloaded.", "info");
      }
      view.applyHistory(payload);
      break;
    case "ROOM_UPDATED":
      room = payload.room;
      showRoom();
      view.schedule();
      break;
    case "PRESENCE":
    case "USER_JOINED":
    case "USER_LEFT":
      showMembers(payload.count);
      break;
    case "USER_MUTED":
      if (payload.userId === userId) notify($("notices"), `The host muted you until ${new Date(payload.until).toLocaleTimeString()}.`);
      break;
    case "ERROR":
      if (payload.code === "cooldown" && payload.retryAfterMs) cooldownUntil = Date.now() + payload.retryAfterMs;
      if (payload.type === "SEND_MESSAGE" && payload.clientMsgId && !$("text").value) {
        $("text").value = sentTexts.get(payload.clientMsgId) ?? "";
      }
      notify($("notices"), readableError(payload));
      break;
  }
}

function onStatus(status) {
  const text = { connecting: "connecting…", live: "live", reconnecting: "reconnecting…" }[status] || status;
  $("status").textContent = text;
  $("status").className = `status status-${status}`;
}

function tick() {
  const left = Math.ceil((cooldownUntil - Date.now()) / 1000);
  const send = $("send");
  send.disabled = left > 0;
  send.textContent = left > 0 ? `Send (${left} s)` : "Send";
  if (room) showRoom();
}

function join(name, roomId) {
  store.setItem("roomcast.name", name);
  const url = new URL(location.href);
  url.searchParams.set("room", roomId);
  history.replaceState(null, "", url);
  $("join").hidden = true;
  $("board").hidden = false;
  $("composer").hidden = false;
  connection = new RoomConnection({ room: roomId, user: userId, name, onEvent, onStatus });
  connection.start();
  setInterval(tick, 250);
  $("text").focus();
}

function submit() {
  const text = $("text").value;
  if (!text.trim() || $("send").disabled) return;
  myLastSent = connection.sendMessage(text);
  sentTexts.set(myLastSent, text);
  $("text").value = "";
}

$("join").addEventListener("submit", (event) => {
  event.preventDefault();
  join($("name").value.trim(), $("room").value.trim());
});

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  submit();
});

$("text").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    submit();
  }
});

const params = new URLSearchParams(location.search);
$("name").value = store.getItem("roomcast.name") || "";
$("room").value = params.get("room") || "";
if ($("name").value && $("room").value) join($("name").value, $("room").value);
else ($("name").value ? $("room") : $("name")).focus();
