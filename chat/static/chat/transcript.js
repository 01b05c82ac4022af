// The transcript: one list item per message, kept in the order the server created them,
// each with its text (a MessageView), status and actions, and the view's scroll position.

import { makeCopyButton, makeElement } from "./dom.js";
import { MessageView } from "./render.js";

// How close to the bottom (px) still counts as "following" the reply as it streams.
const FOLLOW_SLACK_PX = 80;

function statusText(data) {
  if (data.status === "stopped" || data.status === "interrupted") return data.status;
  if (data.status === "failed") {
    return data.error && data.error.detail ? `failed: ${data.error.detail}` : "failed";
  }
  return "";
}

class Entry {
  constructor(data) {
    this.data = data;
    this.el = makeElement("li", "message");
    this.role = makeElement("div", "message__role");
    this.content = makeElement("div", "message__content");
    this.waiting = makeElement("div", "message__waiting", "waiting for the model…");
    this.status = makeElement("div", "message__status");
    this.actions = makeElement("div", "message__actions");
    this.copy = makeCopyButton(() => this.data.content);
    this.copy.setAttribute("aria-label", "Copy message");
    this.view = new MessageView(this.content, { markdown: data.role === "assistant" });
    this.el.dataset.id = data.id;
    this.el.append(this.role, this.content, this.waiting, this.status, this.actions);
    this.actions.append(this.copy);
  }

  render() {
    const { data } = this;
    const isUser = data.role === "user";
    this.el.className = `message ${isUser ? "message--user" : "message--assistant"}`;
    this.el.dataset.status = data.status;
    this.role.textContent = isUser ? "You" : "Assistant";
    this.view.show(data.content);
    this.waiting.hidden = !(data.status === "streaming" && data.content === "");
    this.copy.hidden = data.content === "";
    this.status.textContent = statusText(data);
    this.status.hidden = this.status.textContent === "";
  }
}

export class Transcript {
  constructor({ scroll, list }) {
    this.scroll = scroll;
    this.list = list;
    this.entries = new Map(); // message id -> Entry
  }

  isFollowing() {
    const { scrollHeight, scrollTop, clientHeight } = this.scroll;
    return scrollHeight - scrollTop - clientHeight < FOLLOW_SLACK_PX;
  }

  // Runs a DOM change and keeps the view pinned to the bottom if it was there before.
  keepingScroll(change, force = false) {
    const follow = force || this.isFollowing();
    change();
    if (follow) this.scroll.scrollTop = this.scroll.scrollHeight;
  }

  clear() {
    this.entries.clear();
    this.list.replaceChildren();
  }

  get(id) {
    return this.entries.get(id);
  }

  ids() {
    return new Set(this.entries.keys());
  }

  // Counted in the DOM: until `state` arrives the transcript is the server-rendered one.
  isEmpty() {
    return this.list.childElementCount === 0;
  }

  // Inserts or updates one message: a tab that connects while another sends can learn of
  // a reply before the question it answers.
  upsert(data) {
    let entry = this.entries.get(data.id);
    if (entry) {
      const placed = entry.data.created_at;
      entry.data = { ...entry.data, ...data };
      if (!placed && entry.data.created_at) this.place(entry);
    } else {
      entry = new Entry(data);
      this.entries.set(data.id, entry);
      this.place(entry);
    }
    entry.render();
    return entry;
  }

  remove(id) {
    const entry = this.entries.get(id);
    if (!entry) return false;
    entry.el.remove();
    this.entries.delete(id);
    return true;
  }

  // Before the first message created after this one. A message not yet known to the
  // database (a placeholder) counts as the newest; ISO times in UTC sort as text.
  place(entry) {
    const at = entry.data.created_at;
    if (at) {
      for (const el of this.list.children) {
        const other = this.entries.get(el.dataset.id);
        if (!other || other === entry) continue;
        const otherAt = other.data.created_at;
        if (!otherAt || otherAt > at) {
          this.list.insertBefore(entry.el, el);
          return;
        }
      }
    }
    this.list.append(entry.el);
  }

  streaming() {
    for (const entry of this.entries.values()) {
      if (entry.data.status === "streaming") return entry;
    }
    return null;
  }

  last() {
    let last = null;
    for (const entry of this.entries.values()) last = entry;
    return last;
  }
}
