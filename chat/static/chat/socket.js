// The websocket to one conversation: JSON frames in and out, and reconnecting with backoff
// after anything but a close that the page says is final.

const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 8000;

export class ConversationSocket {
  // onFrame(frame); onOpen(); onClose(code) returns whether to reconnect;
  // onReconnecting() when a new attempt is scheduled.
  constructor(url, { onFrame, onOpen, onClose, onReconnecting }) {
    this.url = url;
    this.handlers = { onFrame, onOpen, onClose, onReconnecting };
    this.ws = null;
    this.backoffMs = RECONNECT_MIN_MS;
    this.timer = null;
    this.stopped = false;
    // Back online: no need to sit out the rest of the backoff.
    window.addEventListener("online", () => {
      if (this.ws === null && !this.stopped) this.connect();
    });
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  // Whether the frame went out: nothing is queued while the socket is down.
  send(frame) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  // The server's first frame arrived: the connection works, so the next drop retries fast.
  settled() {
    this.backoffMs = RECONNECT_MIN_MS;
  }

  connect() {
    clearTimeout(this.timer);
    const ws = new WebSocket(this.url);
    this.ws = ws;
    // Every handler checks it still belongs to the current socket: an abandoned one
    // (after a resync) may still deliver a frame or its close.
    ws.addEventListener("open", () => ws === this.ws && this.handlers.onOpen());
    ws.addEventListener("message", (event) => {
      if (ws !== this.ws) return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      this.handlers.onFrame(frame);
    });
    ws.addEventListener("close", (event) => {
      if (ws !== this.ws) return;
      this.ws = null;
      if (this.handlers.onClose(event.code)) this.scheduleReconnect();
      else this.stopped = true;
    });
  }

  // Drops the socket on purpose; the next `state` frame has everything afresh.
  resync() {
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close();
    this.scheduleReconnect();
  }

  scheduleReconnect() {
    this.handlers.onReconnecting();
    this.timer = setTimeout(() => this.connect(), this.backoffMs);
    this.backoffMs = Math.min(this.backoffMs * 2, RECONNECT_MAX_MS);
  }
}
