// The conversation page: frames from the socket applied to the transcript, the controls
// that depend on them (Send, Stop, Regenerate), the title, the connection state, notices,
// and the sidebar of the user's other chats. Without a conversation id the page is a
// draft (/new/): its first send creates the conversation, and the page becomes its page.

import { createApi } from "./api.js";
import { Composer } from "./composer.js";
import { makeButton, makeElement } from "./dom.js";
import { Draft } from "./draft.js";
import { ConversationSettings } from "./settings.js";
import { Sidebar } from "./sidebar.js";
import { ConversationSocket } from "./socket.js";
import { Transcript } from "./transcript.js";

const CLOSE_UNAUTHENTICATED = 4401;
const CLOSE_NOT_FOUND = 4404;

const root = document.getElementById("chat");
const ui = {
  connection: document.getElementById("connection"),
  notices: document.getElementById("notices"),
  empty: document.getElementById("transcript-empty"),
  send: document.getElementById("send"),
  stop: document.getElementById("stop"),
  title: document.getElementById("conversation-title"),
  regenerate: makeButton("Regenerate", "button button--small", () =>
    socket.send({ type: "regenerate" }),
  ),
  // An interrupted reply (its server stopped or died) goes on where it was cut.
  continue: makeButton("Continue", "button button--small", () =>
    socket.send({ type: "continue" }),
  ),
};

const transcript = new Transcript(
  {
    scroll: document.getElementById("transcript-scroll"),
    list: document.getElementById("transcript"),
    jump: document.getElementById("jump-to-latest"),
  },
  { onEdit: (id, content) => socket.send({ type: "edit", message_id: id, content }) },
);
const lastSeq = new Map(); // message id -> seq of the last delta applied to it
let gaveUp = false;
// The conversation's stored title; "" until the server (or the first message) names it.
let conversationTitle = "";

const socket = new ConversationSocket(socketUrl(), {
  onFrame: (frame) => handlers[frame.type]?.(frame),
  onOpen: updateControls,
  onClose,
  onReconnecting: () => setConnection("reconnecting", reconnectingText()),
});

const api = createApi(root.dataset.csrfToken);

const settings = new ConversationSettings(
  {
    form: document.getElementById("settings-form"),
    model: document.getElementById("settings-model"),
    prompt: document.getElementById("settings-prompt"),
    status: document.getElementById("settings-status"),
    modelLabel: document.getElementById("conversation-model-name"),
  },
  { api, conversationId: root.dataset.conversationId },
);

const sidebar = new Sidebar(document.getElementById("sidebar"), {
  api,
  toggle: document.getElementById("sidebar-toggle"),
  currentId: root.dataset.conversationId,
  onCurrentChanged: (conversation) => {
    setTitle(conversation);
    settings.show(conversation);
  },
  onCurrentDeleted: () => window.location.assign("/"),
});

const composer = new Composer(
  {
    form: document.getElementById("composer"),
    input: document.getElementById("composer-input"),
    stop: ui.stop,
  },
  {
    send: (frame) => socket.send(frame),
    canSend: () => !gaveUp && transcript.streaming() === null,
    knownIds: () => transcript.ids(),
    onChange: updateControls,
    onQueued,
    onStop: () => socket.send({ type: "stop" }),
    maxChars: () => Number(root.dataset.maxInputChars),
    onTooLong: (message) => showNotice(message),
  },
);

const draft = new Draft({
  api,
  fields: () => settings.chosen(),
  onCreated: becomeConversation,
  onRefused: (message) => {
    composer.abandon(); // the text stays in the box, to send again
    setConnection("draft");
    showNotice(message);
    updateControls();
  },
});

function isDraft() {
  return root.dataset.conversationId === "";
}

// The message waits for a socket; a draft has none until its conversation exists.
function onQueued() {
  if (isDraft()) {
    setConnection("connecting", "starting the chat…");
    draft.create();
  } else {
    setConnection("reconnecting", reconnectingText());
  }
}

// The draft's conversation exists: this page is now its page, at its own address, and
// the message waiting in the composer goes out once the socket's `state` arrives.
function becomeConversation(conversation) {
  const path = `/c/${conversation.id}/`;
  root.dataset.conversationId = conversation.id;
  const login = root.dataset.loginUrl.split("?")[0];
  root.dataset.loginUrl = `${login}?next=${encodeURIComponent(path)}`;
  window.history.replaceState(null, "", path);
  setTitle(conversation);
  settings.attach(conversation);
  sidebar.add(conversation);
  const exports = document.getElementById("conversation-export");
  for (const link of exports.querySelectorAll("a[data-format]")) {
    link.href = `/api/conversations/${conversation.id}/export/?format=${link.dataset.format}`;
  }
  exports.hidden = false;
  socket.url = socketUrl();
  setConnection("connecting", "connecting…");
  socket.connect();
}

// Said on every attempt, so that a failed one does not hide that a message waits.
function reconnectingText() {
  return composer.hasPending
    ? "reconnecting… your message will be sent once connected"
    : "reconnecting…";
}

function socketUrl() {
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${window.location.host}/ws/conversations/${root.dataset.conversationId}/`;
}

// --- What the page shows besides the transcript -------------------------------------------

// Stop while a reply streams; Regenerate (and Continue, if it was cut) on the last reply
// when nothing streams. It reads "Retry" when that reply failed or was stopped: asking
// again is then what the user wants, and the button should say so.
function updateControls() {
  const open = socket.isOpen;
  const busy = transcript.streaming() !== null;
  ui.empty.hidden = !transcript.isEmpty() || gaveUp;
  ui.stop.hidden = !busy;
  ui.stop.disabled = !open;
  ui.send.disabled = busy || gaveUp || composer.waitingForEcho;
  transcript.setEditable(!busy && !gaveUp && open);
  ui.regenerate.remove();
  ui.continue.remove();
  const last = transcript.last();
  if (!busy && !gaveUp && last && last.data.role === "assistant") {
    ui.regenerate.disabled = !open;
    ui.continue.disabled = !open;
    if (last.data.status === "interrupted") last.actions.append(ui.continue);
    const retry = last.data.status === "failed" || last.data.status === "stopped";
    ui.regenerate.textContent = retry ? "Retry" : "Regenerate";
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

// `data-connection` on the page says where the socket is (draft: none yet, connecting,
// live, reconnecting, gone), for styles and tests; the text says it to the user.
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

function onClose(code) {
  updateControls();
  if (gaveUp) return false; // deleted: the page has said so already
  if (code === CLOSE_UNAUTHENTICATED) {
    window.location.assign(root.dataset.loginUrl);
    return false;
  }
  if (code === CLOSE_NOT_FOUND) {
    gaveUp = true;
    setConnection("gone");
    showNotice("Conversation not found.", { dismissible: false });
    composer.disable();
    updateControls();
    return false;
  }
  return true;
}

// --- Frames from the server ----------------------------------------------------------------

function placeholder(id) {
  return { id, role: "assistant", content: "", status: "streaming", usage: null, error: null };
}

function onState(frame) {
  transcript.keepingScroll(() => {
    transcript.clear();
    lastSeq.clear();
    for (const message of frame.messages) transcript.upsert(message);
    const running = frame.streaming;
    if (running) {
      const id = running.message_id;
      const known = transcript.get(id)?.data || placeholder(id);
      transcript.upsert({ ...known, content: running.content, status: "streaming" });
      lastSeq.set(id, running.seq);
    }
  }, true);
  if (frame.conversation) {
    setTitle(frame.conversation);
    settings.show(frame.conversation);
  }
  socket.settled();
  setConnection("live");
  composer.reconcile(frame.messages, { resend: true });
  updateControls();
}

function onMessage({ message }) {
  const known = transcript.get(message.id);
  const wasStreaming = known && known.data.status === "streaming";
  let data = message;
  if (wasStreaming && message.status === "streaming") {
    // While a reply runs its text is what the deltas built; a copy in a `message` frame
    // may be older, and must not roll the text back.
    data = { ...message, content: known.data.content };
  } else if (message.status === "streaming") {
    lastSeq.set(message.id, 0); // a (re)started reply counts its deltas from 1
  }
  transcript.keepingScroll(() => transcript.upsert(data));
  if (!known && message.role === "user") {
    composer.reconcile([message], { resend: false });
    // The server names an untitled conversation after the first line of its first
    // message, but sends no frame for that; mirror it until the next `state`.
    if (!conversationTitle) {
      const title = firstLine(message.content);
      setTitle({ title });
      sidebar.update({ id: root.dataset.conversationId, title });
    }
  }
  updateControls();
}

function onDelta({ message_id: id, seq, text }) {
  const last = lastSeq.get(id) || 0;
  if (seq <= last) return; // a repeat of text already shown
  if (seq !== last + 1) {
    socket.resync(); // a gap: the `state` frame of a fresh connection has the whole text
    return;
  }
  const entry = transcript.get(id) || transcript.upsert(placeholder(id));
  if (entry.data.status !== "streaming") return; // a late delta of a finished reply
  lastSeq.set(id, seq);
  transcript.keepingScroll(() => transcript.upsert({ id, content: entry.data.content + text }));
  if (seq === 1) updateControls();
}

function onDone({ message_id: id, status, content, usage, error }) {
  if (!transcript.get(id)) transcript.upsert(placeholder(id));
  transcript.keepingScroll(() => transcript.upsert({ id, status, content, usage, error }));
  lastSeq.delete(id);
  updateControls();
}

// Regenerate and edit rewrite history: the messages they drop go from every tab.
function onRemoved({ message_id: id }) {
  if (!transcript.remove(id)) return;
  lastSeq.delete(id);
  updateControls();
}

function onError({ code, detail }) {
  composer.refused();
  showNotice(detail || code || "Something went wrong.");
  updateControls();
}

// Renamed (or its model or system prompt changed) here, in another tab or through the API.
function onConversation({ conversation }) {
  setTitle(conversation);
  settings.show(conversation);
  sidebar.update(conversation);
}

// Deleted in another tab or through the API: nothing more to show or send here.
function onDeleted() {
  gaveUp = true;
  setConnection("gone");
  showNotice("This conversation was deleted.", { dismissible: false });
  composer.disable();
  updateControls();
}

const handlers = {
  state: onState,
  message: onMessage,
  delta: onDelta,
  done: onDone,
  removed: onRemoved,
  conversation: onConversation,
  deleted: onDeleted,
  error: onError,
};

// Esc stops the reply, wherever the focus is (an edit or a rename takes its own Esc).
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && transcript.streaming() !== null) socket.send({ type: "stop" });
});

if (isDraft()) {
  setConnection("draft");
} else {
  setConnection("connecting", "connecting…");
  socket.connect();
}
sidebar.reload();
settings.load();
