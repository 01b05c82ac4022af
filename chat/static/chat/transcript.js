// The transcript: one list item per message, kept in the order the server created them,
// each with its text (a MessageView), status and actions, and the view's scroll position.

import { makeButton, makeCopyButton, makeElement } from "./dom.js";
import { MessageView } from "./render.js";

// How close to the bottom (px) still counts as "following" the reply as it streams.
const FOLLOW_SLACK_PX = 80;

// The model and the tokens of a finished reply ("≈" when the server sent no usage).
function metaText(data) {
  if (data.role !== "assistant" || data.status === "streaming") return "";
  const parts = [];
  if (data.model) parts.push(data.model);
  const tokens = data.usage && data.usage.completion_tokens;
  if (tokens) parts.push(`${data.usage.estimated ? "≈" : ""}${tokens} tokens`);
  return parts.join(" · ");
}

function statusText(data) {
  if (data.status === "stopped" || data.status === "interrupted") return data.status;
  if (data.status === "failed") {
    return data.error && data.error.detail ? `failed: ${data.error.detail}` : "failed";
  }
  return "";
}

class Entry {
  constructor(data, { onEdit }) {
    this.data = data;
    this.onEdit = onEdit;
    this.el = makeElement("li", "message");
    this.role = makeElement("div", "message__role");
    this.content = makeElement("div", "message__content");
    this.waiting = makeElement("div", "message__waiting", "waiting for the model…");
    this.status = makeElement("div", "message__status");
    this.meta = makeElement("div", "message__meta");
    this.actions = makeElement("div", "message__actions");
    this.copy = makeCopyButton(() => this.data.content);
    this.copy.setAttribute("aria-label", "Copy message");
    this.view = new MessageView(this.content, { markdown: data.role === "assistant" });
    this.el.dataset.id = data.id;
    this.el.append(this.role, this.content, this.waiting, this.status, this.meta, this.actions);
    this.actions.append(this.copy);
    if (data.role === "user") {
      this.edit = makeButton("Edit", "button button--small", () => this.startEdit());
      this.edit.setAttribute("aria-label", "Edit message");
      this.actions.append(this.edit);
    }
  }

  // Edit in place: Save sends the new text (the server drops what followed and answers it
  // anew), Cancel or Esc puts the message back.
  startEdit() {
    const form = makeElement("form", "message__edit");
    const input = makeElement("textarea", "message__edit-input");
    input.value = this.data.content;
    input.rows = Math.min(10, this.data.content.split("\n").length + 1);
    input.setAttribute("aria-label", "Edited message");
    const cancel = () => {
      form.replaceWith(this.content);
      this.actions.hidden = false;
      this.edit.focus();
    };
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const content = input.value;
      if (content.trim() === "") return;
      if (content !== this.data.content && !this.onEdit(this.data.id, content)) return;
      cancel();
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.stopPropagation(); // cancels the edit, not the reply
        cancel();
      } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    const save = makeElement("button", "button button--primary button--small", "Save");
    save.type = "submit";
    const buttons = makeElement("div", "message__edit-actions");
    buttons.append(save, makeButton("Cancel", "button button--small", cancel));
    form.append(input, buttons);
    this.content.replaceWith(form);
    this.actions.hidden = true;
    input.focus();
  }

  render() {
    const { data } = this;
    const isUser = data.role === "user";
    this.el.className = `message ${isUser ? "message--user" : "message--assistant"}`;
    this.el.dataset.status = data.status;
    // Screen readers hold the live region's news of a reply until it is whole.
    this.el.setAttribute("aria-busy", String(data.status === "streaming"));
    this.role.textContent = isUser ? "You" : "Assistant";
    this.view.show(data.content);
    this.waiting.hidden = !(data.status === "streaming" && data.content === "");
    this.copy.hidden = data.content === "";
    this.status.textContent = statusText(data);
    this.status.hidden = this.status.textContent === "";
    this.meta.textContent = metaText(data);
    this.meta.hidden = this.meta.textContent === "";
  }

  // Editing is offered while nothing streams.
  setEditable(editable) {
    if (this.edit) this.edit.hidden = !editable;
  }
}

export class Transcript {
  // onEdit(id, content) sends an edit and returns whether it went out.
  constructor({ scroll, list, jump }, { onEdit }) {
    this.scroll = scroll;
    this.list = list;
    this.jump = jump;
    this.onEdit = onEdit;
    this.entries = new Map(); // message id -> Entry
    // Scrolled up while a reply streams: "Jump to latest" brings the view back down.
    this.scroll.addEventListener("scroll", () => {
      if (this.isFollowing()) this.jump.hidden = true;
    });
    this.jump.addEventListener("click", () => {
      this.scroll.scrollTop = this.scroll.scrollHeight;
      this.jump.hidden = true;
    });
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
    else this.jump.hidden = false;
  }

  setEditable(editable) {
    for (const entry of this.entries.values()) entry.setEditable(editable);
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
      entry = new Entry(data, { onEdit: this.onEdit });
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
