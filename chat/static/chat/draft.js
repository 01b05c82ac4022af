// A draft: the page at /new/, with nothing stored yet. Its first send creates the
// conversation, with the model and system prompt picked on the page; only then does the
// page become that conversation's. An unused "New chat" thus leaves nothing behind.

import { ApiError } from "./api.js";

export class Draft {
  // fields() gives the new conversation's fields; onCreated(conversation) once it exists;
  // onRefused(message) when the server would not create it (a rate limit, a bad model).
  constructor({ api, fields, onCreated, onRefused }) {
    this.api = api;
    this.hooks = { fields, onCreated, onRefused };
    this.creating = false; // stays true once created: one draft makes one conversation
  }

  async create() {
    if (this.creating) return;
    this.creating = true;
    let conversation;
    try {
      conversation = await this.api("POST", "/api/conversations/", this.hooks.fields());
    } catch (error) {
      this.creating = false;
      if (!(error instanceof ApiError)) throw error;
      this.hooks.onRefused(error.message);
      return;
    }
    this.hooks.onCreated(conversation);
  }
}
