// The conversation page: one websocket to the conversation, frames rendered as plain text,
// and the composer. Model output is untrusted, so text only ever goes in through
// textContent / Text nodes, never innerHTML.

const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 8000;
const CLOSE_UNAUTHENTICATED = 4401;
const CLOSE_NOT_FOUND = 4404;
// How close to the bottom (px) still counts as "following" the reply as it streams.
const FOLLOW_SLACK_PX = 80;

const root = document.getElementById("chat");
const ui = {
  scroll: document.getElementById("transcript-scroll"),
  transcript: document.getElementById("transcript"),
  empty: document.getElementById("transcript-empty"),
  connection: document.getElementById("connection"),
  notices: document.getElementById("notices"),
  form: document.getElementById("composer"),
  input: document.getElementById("composer-input"),
  send: document.getElementById("send"),
  stop: document.getElementById("stop"),
  title: document.getElementById("conversation-title"),
  regenerate: makeButton("Regenerate", "button button--small", () =>
    sendFrame({ type: "regenerate" }),
  ),
};

// --- State -----------------------------------------------------------------------------

const messages = new Map(); // message id -> {data, el, content, waiting, status, actions}
const lastSeq = new Map(); // message id -> seq of the last delta applied to it
let socket = null;
let backoffMs = RECONNECT_MIN_MS;
let reconnectTimer = null;
let gaveUp = false;
// The message being sent: kept (and its text kept in the composer) until the server echoes
// it, so a dropped socket loses nothing. {clientMsgId, content, sent, knownIds}
let pending = null;
// The conversation's stored title; "" until the server (or the first message) names it.
let conversationTitle = "";

// --- Small DOM helpers -----------------------------------------------------------------

function makeElement(tag, className, text = "") {
  const el = document.createElement(tag);
  el.className = className;
  el.textContent = text;
  return el;
}

function makeButton(label, className, onClick) {
  const button = makeElement("button", className, label);
  button.type = "button";
  button.addEventListener("click", onClick);
  return button;
}

function isFollowing() {
  const { scrollHeight, scrollTop, clientHeight } = ui.scroll;
  return scrollHeight - scrollTop - clientHeight < FOLLOW_SLACK_PX;
}

// Runs a DOM change and keeps the view pinned to the bottom if it was there before.
function keepingScroll(change, force = false) {
  const follow = force || isFollowing();
  change();
  if (follow) ui.scroll.scrollTop = ui.scroll.scrollHeight;
}

// crypto.randomUUID exists only in secure contexts; a plain-http LAN address is not one.
function newClientMsgId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  const part = (from, to) => hex.slice(from, to);
  return `${part(0, 8)}-${part(8, 12)}-${part(12, 16)}-${part(16, 20)}-${part(20, 32)}`;
}

// --- Rendering -------------------------------------------------------------------------

function statusText(data) {
  if (data.status === "stopped" || data.status === "interrupted") return data.status;
  if (data.status === "failed") {
    return data.error && data.error.detail ? `failed: ${data.error.detail}` : "failed";
  }
  return "";
}

function createEntry(data) {
  const entry = {
    data,
    el: makeElement("li", "message"),
    role: makeElement("div", "message__role"),
    content: makeElement("div", "message__content"),
    waiting: makeElement("div", "message__waiting", "waiting for the model…"),
    status: makeElement("div", "message__status"),
    actions: makeElement("div", "message__actions"),
  };
  entry.el.dataset.id = data.id;
  entry.el.append(entry.role, entry.content, entry.waiting, entry.status, entry.actions);
  return entry;
}

function renderEntry(entry) {
  const { data } = entry;
  const isUser = data.role === "user";
  entry.el.className = `message ${isUser ? "message--user" : "message--assistant"}`;
  entry.el.dataset.status = data.status;
  entry.role.textContent = isUser ? "You" : "Assistant";
  entry.content.textContent = data.content;
  entry.waiting.hidden = !(data.status === "streaming" && data.content === "");
  entry.status.textContent = statusText(data);
  entry.status.hidden = entry.status.textContent === "";
}

// Inserts or updates one message, kept in the order the server created them: a tab that
// connects while another sends can learn of a reply before the question it answers.
function upsert(data) {
  let entry = messages.get(data.id);
  if (entry) {
    const placed = entry.data.created_at;
    entry.data = { ...entry.data, ...data };
    if (!placed && entry.data.created_at) place(entry);
  } else {
    entry = createEntry(data);
    messages.set(data.id, entry);
    place(entry);
  }
  renderEntry(entry);
  return entry;
}

// Before the first message created after this one. A message not yet known to the
// database (a placeholder) counts as the newest; ISO times in UTC sort as text.
function place(entry) {
  const at = entry.data.created_at;
  if (!at) {
    ui.transcript.append(entry.el);
    return;
  }
  for (const el of ui.transcript.children) {
    const other = messages.get(el.dataset.id);
    if (!other || other === entry) continue;
    const otherAt = other.data.created_at;
    if (!otherAt || otherAt > at) {
      ui.transcript.insertBefore(entry.el, el);
      return;
    }
  }
  ui.transcript.append(entry.el);
}

function streamingEntry() {
  for (const entry of messages.values()) {
    if (entry.data.status === "streaming") return entry;
  }
  return null;
}

function lastEntry() {
  let last = null;
  for (const entry of messages.values()) last = entry;
  return last;
}

// Stop while a reply streams; Regenerate on the last reply when nothing streams.
function updateControls() {
  const open = isOpen();
  const busy = streamingEntry() !== null;
  // Counted in the DOM: until `state` arrives the transcript is the server-rendered one.
  ui.empty.hidden = ui.transcript.childElementCount > 0 || gaveUp;
  ui.stop.hidden = !busy;
  ui.stop.disabled = !open;
  ui.send.disabled = busy || gaveUp || (pending !== null && pending.sent);
  ui.regenerate.remove();
  const last = lastEntry();
  if (!busy && !gaveUp && last && last.data.role === "assistant") {
    ui.regenerate.disabled = !open;
    last.actions.append(ui.regenerate);
  }
}

function firstLine(text) {
  return text.trim().split("\n")[0].slice(0, 80);
}

function setTitle(conversation) {
  conversationTitle = conversation.title;
  const title = conversation.title || "New chat";
  ui.title.textContent = title;
  document.title = `${title} · Chat`;
}

// `data-connection` on the page says where the socket is (connecting, live, reconnecting,
// gone), for styles and tests; the text says it to the user.
function setConnection(state, text = "") {
  root.dataset.connection = state;
  ui.connection.textContent = text;
  ui.connection.hidden = text === "";
}

function showNotice(text, { dismissible = true } = {}) {
  const notice = makeElement("div", "notice");
  notice.setAttribute("role", "alert");
  notice.append(makeElement("p", "", text));
  if (dismissible) {
    const close = makeButton("×", "button button--quiet", () => notice.remove());
    close.setAttribute("aria-label", "Dismiss");
    notice.append(close);
  }
  ui.notices.append(notice);
}

// --- Frames from the server --------------------------------------------------------------

function onState(frame) {
  keepingScroll(() => {
    messages.clear();
    lastSeq.clear();
    ui.transcript.replaceChildren();
    for (const message of frame.messages) upsert(message);
    const running = frame.streaming;
    if (running) {
      const entry = messages.get(running.message_id) || upsert(placeholder(running.message_id));
      entry.data.content = running.content;
      entry.data.status = "streaming";
      renderEntry(entry);
      lastSeq.set(running.message_id, running.seq);
    }
  }, true);
  if (frame.conversation) setTitle(frame.conversation);
  backoffMs = RECONNECT_MIN_MS;
  setConnection("live");
  reconcilePending(frame.messages, { resend: true });
  updateControls();
}

function onMessage({ message }) {
  const known = messages.get(message.id);
  const wasStreaming = known && known.data.status === "streaming";
  let data = message;
  if (wasStreaming && message.status === "streaming") {
    // While a reply runs its text is what the deltas built; a copy in a `message` frame
    // may be older, and must not roll the text back.
    data = { ...message, content: known.data.content };
  } else if (message.status === "streaming") {
    lastSeq.set(message.id, 0); // a (re)started reply counts its deltas from 1
  }
  keepingScroll(() => upsert(data));
  if (!known && message.role === "user") {
    reconcilePending([message], { resend: false });
    // The server names an untitled conversation after the first line of its first
    // message, but sends no frame for that; mirror it until the next `state`.
    if (!conversationTitle) setTitle({ title: firstLine(message.content) });
  }
  updateControls();
}

function onDelta({ message_id: id, seq, text }) {
  const last = lastSeq.get(id) || 0;
  if (seq <= last) return; // a repeat of text already shown
  if (seq !== last + 1) {
    resync(); // a gap: the `state` frame of a fresh connection has the whole text
    return;
  }
  const entry = messages.get(id) || upsert(placeholder(id));
  if (entry.data.status !== "streaming") return; // a late delta of a finished reply
  lastSeq.set(id, seq);
  keepingScroll(() => {
    entry.data.content += text;
    entry.content.append(text); // a Text node: never parsed as HTML
    entry.waiting.hidden = true;
  });
  if (seq === 1) updateControls();
}

function onDone({ message_id: id, status, content, usage, error }) {
  const entry = messages.get(id) || upsert(placeholder(id));
  entry.data = { ...entry.data, status, content, usage, error };
  keepingScroll(() => renderEntry(entry));
  lastSeq.delete(id);
  updateControls();
}

// Regenerate and edit rewrite history: the messages they drop go from every tab.
function onRemoved({ message_id: id }) {
  const entry = messages.get(id);
  if (!entry) return;
  entry.el.remove();
  messages.delete(id);
  lastSeq.delete(id);
  updateControls();
}

function onError({ code, detail }) {
  // The send (if any) was refused: stop waiting for its echo, but keep the draft.
  if (pending && pending.sent) pending = null;
  showNotice(detail || code || "Something went wrong.");
  updateControls();
}

function placeholder(id) {
  return { id, role: "assistant", content: "", status: "streaming", usage: null, error: null };
}

const handlers = {
  state: onState,
  message: onMessage,
  delta: onDelta,
  done: onDone,
  removed: onRemoved,
  error: onError,
};

// --- The composer ------------------------------------------------------------------------

function submitDraft() {
  const content = ui.input.value;
  if (content.trim() === "" || gaveUp || streamingEntry()) return;
  if (pending && pending.sent) return; // still waiting for the echo of the last send
  const knownIds = new Set(messages.keys());
  pending = { clientMsgId: newClientMsgId(), content, sent: false, knownIds };
  flushPending();
}

function flushPending() {
  if (!pending) return;
  if (!isOpen()) {
    setConnection("reconnecting", "reconnecting… your message will be sent once connected");
    return;
  }
  const { content, clientMsgId } = pending;
  sendFrame({ type: "send", content, client_msg_id: clientMsgId });
  pending.sent = true;
  updateControls();
}

// Clears the draft once the server has the message; otherwise (re)sends it. Resending is
// safe: the server makes one message per client_msg_id.
function reconcilePending(candidates, { resend }) {
  if (!pending) return;
  const { content, knownIds } = pending;
  const echoed = candidates.some(
    (m) => m.role === "user" && !knownIds.has(m.id) && m.content.trim() === content.trim(),
  );
  if (echoed) {
    if (ui.input.value === content) ui.input.value = "";
    pending = null;
  } else if (resend) {
    flushPending();
  }
}

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  submitDraft();
});

ui.input.addEventListener("keydown", (event) => {
  // Enter sends, Shift+Enter is a newline; never send half of an IME composition.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    submitDraft();
  }
});

ui.stop.addEventListener("click", () => sendFrame({ type: "stop" }));

// --- The socket --------------------------------------------------------------------------

function isOpen() {
  return socket !== null && socket.readyState === WebSocket.OPEN;
}

function sendFrame(frame) {
  if (isOpen()) socket.send(JSON.stringify(frame));
}

function socketUrl() {
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${window.location.host}/ws/conversations/${root.dataset.conversationId}/`;
}

function connect() {
  clearTimeout(reconnectTimer);
  const ws = new WebSocket(socketUrl());
  socket = ws;
  // Every handler checks it still belongs to the current socket: an abandoned one
  // (after a resync) may still deliver a frame or its close.
  ws.addEventListener("open", () => ws === socket && updateControls());
  ws.addEventListener("message", (event) => {
    if (ws !== socket) return;
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    const handle = handlers[frame.type];
    if (handle) handle(frame);
  });
  ws.addEventListener("close", (event) => ws === socket && onClose(event.code));
}

function onClose(code) {
  socket = null;
  updateControls();
  if (code === CLOSE_UNAUTHENTICATED) {
    window.location.assign(root.dataset.loginUrl);
  } else if (code === CLOSE_NOT_FOUND) {
    gaveUp = true;
    setConnection("gone");
    showNotice("Conversation not found.", { dismissible: false });
    ui.input.disabled = true;
    updateControls();
  } else {
    scheduleReconnect();
  }
}

function scheduleReconnect() {
  setConnection("reconnecting", "reconnecting…");
  reconnectTimer = setTimeout(connect, backoffMs);
  backoffMs = Math.min(backoffMs * 2, RECONNECT_MAX_MS);
}

// Drops the socket on purpose; the next `state` frame renders everything afresh.
function resync() {
  const ws = socket;
  socket = null;
  if (ws) ws.close();
  scheduleReconnect();
}

// Back online: no need to sit out the rest of the backoff.
window.addEventListener("online", () => {
  if (socket === null && !gaveUp) connect();
});

setConnection("connecting", "connecting…");
connect();
