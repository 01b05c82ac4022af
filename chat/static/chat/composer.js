// The composer: the draft, Enter to send (Shift+Enter for a new line), and the message
// being sent, kept (with its text left in the box) until the server echoes it, so that a
// dropped socket loses nothing. Resending is safe: the server makes one message per
// client_msg_id.

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

export class Composer {
  // send(frame) returns whether it went out; canSend() says whether the page takes a new
  // message now; knownIds() the messages shown; onChange() after the pending send changes;
  // onQueued() when the message waits for a connection; maxChars() the longest message
  // the server takes, and onTooLong(text) when the draft is longer (it stays in the box).
  constructor(
    { form, input, stop },
    { send, canSend, knownIds, onChange, onQueued, onStop, maxChars, onTooLong },
  ) {
    this.input = input;
    this.hooks = { send, canSend, knownIds, onChange, onQueued, maxChars, onTooLong };
    this.pending = null; // {clientMsgId, content, sent, knownIds}
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    input.addEventListener("keydown", (event) => {
      // Never send half of an IME composition.
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.submit();
      }
    });
    stop.addEventListener("click", onStop);
  }

  // A message not yet known to be stored: the next connection sends it (again).
  get hasPending() {
    return this.pending !== null;
  }

  get waitingForEcho() {
    return this.pending !== null && this.pending.sent;
  }

  submit() {
    const content = this.input.value;
    if (content.trim() === "" || !this.hooks.canSend() || this.waitingForEcho) return;
    // Said here, before anything is stored (a draft's conversation is created by its
    // first send); counted in code points, as the server counts.
    const length = [...content].length;
    const most = this.hooks.maxChars();
    if (length > most) {
      this.hooks.onTooLong(
        `A message may hold at most ${most} characters; this one has ${length}. ` +
          "Shorten it, or send it in parts.",
      );
      return;
    }
    const knownIds = this.hooks.knownIds();
    this.pending = { clientMsgId: newClientMsgId(), content, sent: false, knownIds };
    this.flush();
  }

  flush() {
    if (!this.pending) return;
    const { content, clientMsgId } = this.pending;
    if (!this.hooks.send({ type: "send", content, client_msg_id: clientMsgId })) {
      this.hooks.onQueued();
      return;
    }
    this.pending.sent = true;
    this.hooks.onChange();
  }

  // Clears the draft once the server has the message; otherwise (re)sends it if asked.
  reconcile(candidates, { resend }) {
    if (!this.pending) return;
    const { content, knownIds } = this.pending;
    const echoed = candidates.some(
      (m) => m.role === "user" && !knownIds.has(m.id) && m.content.trim() === content.trim(),
    );
    if (echoed) {
      if (this.input.value === content) this.input.value = "";
      this.pending = null;
    } else if (resend) {
      this.flush();
    }
  }

  // The send was refused: stop waiting for its echo, but keep the draft.
  refused() {
    if (this.waitingForEcho) this.pending = null;
  }

  // The message cannot go anywhere (its conversation could not be created): forget it,
  // keeping its text in the box.
  abandon() {
    this.pending = null;
  }

  disable() {
    this.input.disabled = true;
  }
}
