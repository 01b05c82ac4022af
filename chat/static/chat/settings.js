// The conversation's settings: its model (one of those /api/models/ offers) and its
// system prompt, changed through the API. Every open tab hears of a change (the socket's
// `conversation` frame) and shows it. On a draft (no conversation yet) they are what the
// conversation will be created with.

import { ApiError } from "./api.js";
import { makeElement } from "./dom.js";

export class ConversationSettings {
  constructor({ form, model, prompt, status, modelLabel }, { api, conversationId }) {
    this.ui = { form, model, prompt, status, modelLabel };
    this.api = api;
    this.url = conversationId ? `/api/conversations/${conversationId}/` : null;
    this.offered = null; // the models the server offers, once asked
    this.current = { model: model.value, system_prompt: prompt.value };
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.save();
    });
  }

  say(text) {
    this.ui.status.textContent = text;
  }

  async load() {
    try {
      this.offered = (await this.api("GET", "/api/models/")).models;
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      this.say(error.message);
      return;
    }
    this.fillModels();
  }

  // The offered models, and the conversation's own if the server no longer offers it.
  fillModels() {
    const { model } = this.current;
    const names = [...this.offered];
    if (!names.includes(model)) names.unshift(model);
    this.ui.model.replaceChildren(
      ...names.map((name) => {
        const gone = !this.offered.includes(name);
        const option = makeElement("option", "", gone ? `${name} (no longer offered)` : name);
        option.value = name;
        return option;
      }),
    );
    this.ui.model.value = model;
    if (!this.offered.includes(model)) {
      this.say(`${model} is no longer offered here: pick another model to go on.`);
    }
  }

  // The model and system prompt picked on the page, for a draft's conversation.
  chosen() {
    return { model: this.ui.model.value, system_prompt: this.ui.prompt.value };
  }

  // The draft's conversation now exists: changes go to it from now on.
  attach(conversation) {
    this.url = `/api/conversations/${conversation.id}/`;
    this.show(conversation);
  }

  // The conversation as the server has it now (a `state` or `conversation` frame, or the
  // answer to a save); a field being edited keeps what the user typed.
  show(conversation) {
    this.current = { model: conversation.model, system_prompt: conversation.system_prompt };
    this.ui.modelLabel.textContent = conversation.model;
    if (this.offered !== null) this.fillModels();
    if (document.activeElement !== this.ui.prompt) {
      this.ui.prompt.value = conversation.system_prompt;
    }
  }

  async save() {
    if (this.url === null) {
      this.say("Kept: the chat starts with these when you send the first message.");
      return;
    }
    const change = this.chosen();
    this.say("Saving…");
    try {
      this.show(await this.api("PATCH", this.url, change));
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      this.say(error.message);
      return;
    }
    this.say("Saved. The next reply uses these.");
  }
}
