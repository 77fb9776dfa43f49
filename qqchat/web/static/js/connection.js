// One WebSocket to the daemon: JSON frames in and out, replies matched to requests by
// `req`, pushes handed on. It knows nothing of users; the session decides when to
// connect again.

/** A request the server answered with an error frame. */
export class ServerError extends Error {
  constructor(frame) {
    super(frame.message || frame.code);
    this.code = frame.code;
    this.frame = frame;
  }
}

/** The connection went away before the reply came. */
export class Disconnected extends Error {
  constructor() {
    super("disconnected");
    this.code = "disconnected";
  }
}

/** The URL of the daemon's WebSocket: same host and port as the page, wss on https. */
export function socketUrl(loc = location) {
  return `${loc.protocol === "https:" ? "wss" : "ws"}://${loc.host}/ws`;
}

export class Connection extends EventTarget {
  /**
   * @param {string} url
   * @param {typeof WebSocket} [Impl] a WebSocket class (tests pass a fake)
   */
  constructor(url, Impl = WebSocket) {
    super();
    this.url = url;
    this.Impl = Impl;
    this.ws = null;
    this._req = 0;
    /** @type {Map<number, {resolve: Function, reject: Function}>} */
    this._waiting = new Map();
  }

  get isOpen() {
    return !!this.ws && this.ws.readyState === 1;
  }

  /** Open the socket; resolves when it is open, rejects if it closes first. */
  open() {
    this.close();
    return new Promise((resolve, reject) => {
      const ws = new this.Impl(this.url);
      this.ws = ws;
      let opened = false;
      ws.onopen = () => {
        opened = true;
        resolve();
      };
      ws.onmessage = (ev) => this._frame(ev.data);
      ws.onclose = (ev) => {
        if (this.ws !== ws) return;
        this.ws = null;
        this._failAll();
        if (!opened) reject(new Disconnected());
        this.dispatchEvent(new CustomEvent("close", { detail: { code: ev.code } }));
      };
    });
  }

  /** Close without telling anyone: the session asked for it. */
  close() {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    ws.onclose = ws.onmessage = ws.onopen = null;
    this._failAll();
    try {
      ws.close();
    } catch {
      // already closing
    }
  }

  _failAll() {
    const waiting = [...this._waiting.values()];
    this._waiting.clear();
    for (const w of waiting) w.reject(new Disconnected());
  }

  _frame(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return; // the server only sends JSON; ignore anything else
    }
    if (frame === null || typeof frame !== "object") return;
    if ("req" in frame && this._waiting.has(frame.req)) {
      const w = this._waiting.get(frame.req);
      this._waiting.delete(frame.req);
      if (frame.type === "error") w.reject(new ServerError(frame));
      else w.resolve(frame);
      return;
    }
    this.dispatchEvent(new CustomEvent("push", { detail: frame }));
  }

  /** Send a frame that wants no reply matched (none is asked for: no `req`). */
  send(frame) {
    if (!this.isOpen) throw new Disconnected();
    this.ws.send(JSON.stringify(frame));
  }

  /**
   * Send a request; resolves with its reply, rejects with ServerError or Disconnected.
   * @param {string} type
   * @param {object} [fields]
   */
  request(type, fields = {}) {
    if (!this.isOpen) return Promise.reject(new Disconnected());
    const req = ++this._req;
    return new Promise((resolve, reject) => {
      this._waiting.set(req, { resolve, reject });
      this.ws.send(JSON.stringify({ ...fields, type, req }));
    });
  }
}
