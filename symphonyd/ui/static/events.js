// Follows GET /v1/events (server-sent events). EventSource cannot send an Authorization
// header, so the stream is read with fetch(). When it drops, the page says so and tries
// again with a growing delay, resuming after the last revision it saw (?since=); a 410
// (that history is gone) makes the page re-read everything and start from now.
import { session } from "./api.js";

export class EventFeed {
  constructor({ onChange, onState, onReset }) {
    this.onChange = onChange; this.onState = onState; this.onReset = onReset;
    this.revision = null; this.stopped = false; this.controller = null; this.delay = 500;
  }

  start(revision) { this.revision = revision; this.stopped = false; this.loop(); }

  stop() { this.stopped = true; if (this.controller) this.controller.abort(); }

  async loop() {
    while (!this.stopped) {
      try {
        await this.follow();
      } catch (exc) {
        if (this.stopped) return;
      }
      if (this.stopped) return;
      this.onState("down", this.delay);
      await new Promise((r) => setTimeout(r, this.delay));
      this.delay = Math.min(this.delay * 2, 5000);
    }
  }

  async follow() {
    this.controller = new AbortController();
    const query = this.revision !== null ? `?since=${this.revision}&keepalive=5s` : "?keepalive=5s";
    let watchdog = null;
    const arm = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => this.controller.abort(), 15000); // keep-alives every 5 s
    };
    try {
      arm();
      const response = await fetch(`/v1/events${query}`, {
        headers: { Authorization: `Bearer ${session.token}`, Accept: "text/event-stream" },
        signal: this.controller.signal,
      });
      if (response.status === 410) { this.revision = null; this.onReset(); return; }
      if (!response.ok) throw new Error(`events: ${response.status}`);
      if (this.revision === null) this.revision = Number(response.headers.get("X-Symphonyd-Revision"));
      this.onState("up"); this.delay = 500;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        arm();
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          this.dispatch(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } finally {
      clearTimeout(watchdog);
    }
  }

  dispatch(block) {
    let id = null; let name = ""; let data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("id: ")) id = Number(line.slice(4));
      else if (line.startsWith("event: ")) name = line.slice(7);
      else if (line.startsWith("data: ")) data += line.slice(6);
    }
    if (name === "reset") { this.revision = null; this.onReset(); return; }
    if (!name) return; // a keep-alive
    if (id !== null) this.revision = id;
    try { this.onChange(name, JSON.parse(data)); } catch { /* a malformed event is skipped */ }
  }
}
