// The sidebar: the user's conversations, newest first, loading more as it scrolls; search
// by title and text; rename in place; delete after a confirmation. All through the JSON
// API. On a phone it folds behind a button.

import { ApiError } from "./api.js";
import { makeButton, makeElement } from "./dom.js";

const PAGE_SIZE = 30;
const SEARCH_DELAY_MS = 250;

export class Sidebar {
  // onCurrentChanged(conversation) after the open conversation is renamed here;
  // onCurrentDeleted() after it is deleted here.
  constructor(root, { api, toggle, currentId, onCurrentChanged, onCurrentDeleted }) {
    this.api = api;
    this.root = root;
    this.toggle = toggle;
    this.list = root.querySelector("#conversation-list");
    this.more = root.querySelector("#conversation-more");
    this.status = root.querySelector("#sidebar-status");
    this.search = root.querySelector("#conversation-search");
    this.currentId = currentId;
    this.hooks = { onCurrentChanged, onCurrentDeleted };
    this.query = "";
    this.next = null;
    this.generation = 0; // a new search makes answers to the last one stale
    this.loading = false;
    this.searchTimer = null;
    this.observer = new IntersectionObserver((seen) => this.onSentinel(seen), { root });
    this.listen();
  }

  listen() {
    this.search.addEventListener("input", () => {
      clearTimeout(this.searchTimer);
      this.searchTimer = setTimeout(() => this.reload(this.search.value.trim()), SEARCH_DELAY_MS);
    });
    this.toggle.addEventListener("click", () => this.fold(!this.isOpen()));
    this.root.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.isOpen()) {
        this.fold(false);
        this.toggle.focus();
      }
    });
  }

  isOpen() {
    return document.body.dataset.sidebar === "open";
  }

  // Only a phone-sized page folds it: elsewhere the sidebar is always shown.
  fold(open) {
    document.body.dataset.sidebar = open ? "open" : "closed";
    this.toggle.setAttribute("aria-expanded", String(open));
    if (open) this.search.focus();
  }

  say(text) {
    this.status.textContent = text;
    this.status.hidden = text === "";
  }

  async reload(query = this.query) {
    this.query = query;
    this.generation += 1;
    this.next = null;
    this.list.replaceChildren();
    await this.load(null);
  }

  async load(cursor) {
    const generation = this.generation;
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (this.query) params.set("q", this.query);
    if (cursor) params.set("cursor", cursor);
    this.loading = true;
    let page = null;
    try {
      page = await this.call("GET", `/api/conversations/?${params}`);
    } finally {
      this.loading = false;
    }
    if (generation !== this.generation || page === null) return;
    for (const conversation of page.results) {
      // Already shown if this page created it (`add`) while the list was on its way.
      if (!this.find(conversation.id)) this.list.append(this.item(conversation));
    }
    this.next = page.next;
    this.more.hidden = this.next === null;
    if (this.list.childElementCount === 0) {
      this.say(this.query ? "No chat matches." : "No chats yet.");
    } else {
      this.say("");
    }
    // Observed afresh, the sentinel reports at once whether it is still in view.
    this.observer.disconnect();
    if (this.next !== null) this.observer.observe(this.more);
  }

  onSentinel(entries) {
    const seen = entries.some((entry) => entry.isIntersecting);
    if (seen && this.next !== null && !this.loading) this.load(this.next);
  }

  // The API's JSON answer, or null (and the reason in the sidebar) on failure.
  async call(method, url, body) {
    try {
      return await this.api(method, url, body);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      this.say(error.message);
      return null;
    }
  }

  item(conversation) {
    const li = makeElement("li", "sidebar__item");
    li.dataset.id = conversation.id;
    const link = makeElement("a", "sidebar__link", conversation.title || "New chat");
    link.href = `/c/${conversation.id}/`;
    if (conversation.id === this.currentId) {
      link.setAttribute("aria-current", "page");
      li.classList.add("sidebar__item--current");
    }
    const actions = this.actions(li, conversation);
    li.append(link, actions);
    return li;
  }

  actions(li, conversation) {
    const actions = makeElement("div", "sidebar__actions");
    const rename = makeButton("Rename", "button button--quiet button--small", () =>
      this.startRename(li, conversation),
    );
    const remove = makeButton("Delete", "button button--quiet button--small", () =>
      this.confirmDelete(li, conversation),
    );
    const title = conversation.title || "New chat";
    rename.setAttribute("aria-label", `Rename “${title}”`);
    remove.setAttribute("aria-label", `Delete “${title}”`);
    actions.append(rename, remove);
    return actions;
  }

  // --- Rename in place ---------------------------------------------------------------------

  startRename(li, conversation) {
    const link = li.querySelector(".sidebar__link");
    const input = makeElement("input", "sidebar__rename");
    input.value = conversation.title;
    input.maxLength = 200;
    input.setAttribute("aria-label", "New title");
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const title = input.value.trim();
      input.replaceWith(link);
      if (save && title !== "" && title !== conversation.title) await this.rename(li, conversation, title);
      link.focus();
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") finish(true);
      if (event.key === "Escape") {
        event.stopPropagation(); // cancels the rename, not the sidebar on a phone
        finish(false);
      }
    });
    input.addEventListener("blur", () => finish(true));
    link.replaceWith(input);
    input.focus();
    input.select();
  }

  async rename(li, conversation, title) {
    const url = `/api/conversations/${conversation.id}/`;
    const changed = await this.call("PATCH", url, { title });
    if (changed === null) return;
    this.update(changed);
    if (changed.id === this.currentId) this.hooks.onCurrentChanged(changed);
  }

  find(id) {
    return this.list.querySelector(`[data-id="${CSS.escape(id)}"]`);
  }

  // A conversation this page just created (a draft's first send): the open one, on top.
  add(conversation) {
    this.currentId = conversation.id;
    const shown = this.find(conversation.id);
    if (shown) {
      shown.replaceWith(this.item(conversation)); // listed before it was the open one
    } else if (!this.query) {
      this.list.prepend(this.item(conversation)); // (a search's results stay as they are)
      this.say("");
    }
  }

  // A conversation changed (here, or in another tab: the socket's `conversation` frame).
  update(conversation) {
    const li = this.find(conversation.id);
    if (!li) return;
    li.replaceWith(this.item(conversation));
  }

  // --- Delete, once confirmed ----------------------------------------------------------------

  confirmDelete(li, conversation) {
    const actions = li.querySelector(".sidebar__actions");
    const confirm = makeElement("div", "sidebar__confirm");
    confirm.setAttribute("role", "group");
    confirm.setAttribute("aria-label", "Confirm delete");
    const cancel = makeButton("Cancel", "button button--small", () => {
      confirm.replaceWith(actions);
      actions.querySelector("button").focus();
    });
    const yes = makeButton("Delete", "button button--small button--danger", () =>
      this.delete(li, conversation),
    );
    confirm.append(makeElement("span", "", "Delete this chat?"), yes, cancel);
    actions.replaceWith(confirm);
    cancel.focus();
  }

  async delete(li, conversation) {
    const deleted = await this.call("DELETE", `/api/conversations/${conversation.id}/`);
    if (deleted === null) return;
    li.remove();
    if (conversation.id === this.currentId) this.hooks.onCurrentDeleted();
  }
}
