/*
 * coremq.js: a browser client of CoreMQ over the project's WebSocket endpoint.
 * No dependencies, no build step: <script src="{% static 'coremq/coremq.js' %}"></script>.
 *
 *   const mq = new CoreMQ("/ws/coremq/");
 *   mq.subscribe("chat", (message, meta) => console.log(meta.id, message));
 *   const { id } = await mq.publish("chat", { text: "hello" });
 *   mq.on("state", (state) => ...);         // connecting, open, reconnecting, closed
 *   mq.on("gap", ({ queue, from, to }) => ...);   // messages that could not be recovered
 *   mq.on("revoked", ({ code, error }) => ...);    // credentials revoked or refused: closed for good
 *
 * Given a list of URLs (several web processes or nodes of one broker), it
 * connects to the first and, after each failed attempt or lost connection,
 * to the next one (the first after the last):
 *   const mq = new CoreMQ(["wss://a.example/ws/coremq/", "wss://b.example/ws/coremq/"]);
 *
 * It reconnects by itself (exponential backoff with jitter), subscribes again,
 * and fetches from history what it missed meanwhile, per queue, from the last
 * message id it saw: a page that loses its connection for a moment misses
 * nothing that is still in the queue's history. The wire protocol is
 * described in docs/websocket.md.
 */
(function (global) {
  "use strict";

  // Close codes the server sends (docs/websocket.md). Every other close is reconnected after.
  const CLOSE_CREDENTIALS = 4008;   // credentials revoked, or ?token= refused: reconnecting cannot help
  const CLOSE_RESTART = 4012;       // the broker (or its web process) is restarting: reconnect
  const CLOSE_TRY_LATER = 4013;     // the broker cannot be reached now: reconnect after a delay

  const DEFAULTS = {
    minDelay: 250,      // ms before the first reconnection attempt (then doubled each time)
    maxDelay: 10000,    // ms, the longest wait between attempts
    timeout: 10000,     // ms a request waits for its answer
    historyPage: 500,   // messages per queue in each history answer of a resume or a refill
    queues: [],         // subscribed at once, without callbacks (add them with subscribe())
  };

  class CoreMQError extends Error {
    constructor(message, frame) {
      super(message);
      this.name = "CoreMQError";
      this.frame = frame || null;
      this.code = (frame && frame.code) || null;  // the error's stable code (docs/protocol.md, Errors)
    }
  }

  class CoreMQ {
    /**
     * @param {string|string[]} url  the endpoint, absolute (ws://, wss://, http(s)://) or relative to the
     *   page; or a non-empty list of them, tried in turn
     * @param {object} options  see DEFAULTS
     */
    constructor(url = "/ws/coremq/", options = {}) {
      const urls = Array.isArray(url) ? url : [url];
      if (urls.length === 0) throw new TypeError("CoreMQ needs at least one URL");
      /** Every endpoint, in the order they are tried. */
      this.urls = urls.map(toWebSocketUrl);
      /** The endpoint of the current (or next) connection. */
      this.url = this.urls[0];
      this.options = Object.assign({}, DEFAULTS, options);
      /** "connecting", "open", "reconnecting" or "closed" */
      this.state = "connecting";
      /** This page's id while connected ("<bridge id>/<n>"); it changes with every connection. */
      this.connectionId = null;
      /** Changes when the broker restarted: message ids of one epoch do not compare with another's. */
      this.epoch = null;
      this.welcome = null;
      this._socket = null;
      this._queues = new Map();     // queue -> QueueState
      this._listeners = new Map();  // event -> Set of functions
      this._pending = new Map();    // ref -> {resolve, reject, timer, sent}
      this._unsent = [];            // requests made while not connected
      this._nextRef = 1;
      this._attempt = 0;
      this._retryTimer = null;
      this._welcomed = false;       // a welcome came before: the next one is a resumption
      this._lastError = null;       // the last error frame without a ref on this socket (why it closes)
      for (const queue of this.options.queues) this.subscribe(queue);
      this._open();
    }

    // -- events ------------------------------------------------------------------

    /**
     * Listen to "state", "open", "close", "reconnecting", "gap", "reset", "direct", "message", "error",
     * and "revoked" ({code, reason, error}: the server closed with 4008; the client stays closed).
     */
    on(event, listener) {
      if (!this._listeners.has(event)) this._listeners.set(event, new Set());
      this._listeners.get(event).add(listener);
      return () => this.off(event, listener);
    }

    off(event, listener) {
      const listeners = this._listeners.get(event);
      if (listeners) listeners.delete(listener);
    }

    _emit(event, ...args) {
      for (const listener of Array.from(this._listeners.get(event) || [])) {
        try {
          listener(...args);
        } catch (error) {
          setTimeout(() => { throw error; });  // report it without breaking the client
        }
      }
    }

    _setState(state) {
      if (this.state !== state) {
        this.state = state;
        this._emit("state", state);
      }
    }

    // -- the API -------------------------------------------------------------------

    /**
     * Call callback(message, meta) for every message of `queue` from now on;
     * meta is {queue, id, sender, sent, replayed}. Resolves once subscribed.
     */
    subscribe(queue, callback) {
      let entry = this._queues.get(queue);
      if (!entry) {
        entry = new QueueState();
        this._queues.set(queue, entry);
        if (this.state === "open") this._subscribeOnWire([queue]);
      }
      if (callback) entry.callbacks.add(callback);
      return entry.ready;
    }

    /** Stop calling `callback` (every callback when omitted); the last one gone ends the subscription. */
    unsubscribe(queue, callback) {
      const entry = this._queues.get(queue);
      if (!entry) return Promise.resolve();
      if (callback) entry.callbacks.delete(callback);
      if (callback && entry.callbacks.size) return Promise.resolve();
      this._queues.delete(queue);
      if (this.state !== "open") return Promise.resolve();
      return this._request({ action: "unsubscribe", queues: [queue] });
    }

    /** Publish an object, array or string; resolves with {queue, id} once the broker took it. */
    publish(queue, message) {
      return this._request({ action: "publish", queue, message });
    }

    /**
     * The history of `queues` (a name or a list): resolves with {history: {queue: [{id, message,
     * sender, sent}, ...]}, sequence: {queue: {first, last}}}. `since` is {queue: id}, or one id for all.
     */
    history(queues, since) {
      const names = typeof queues === "string" ? [queues] : Array.from(queues);
      const after = {};
      for (const name of names) {
        after[name] = since == null ? null : typeof since === "number" ? since : since[name] ?? null;
      }
      return this._request({ action: "history", queues: names, since: after });
    }

    /** The last message id seen per queue (in the current epoch). */
    get lastIds() {
      const ids = {};
      for (const [queue, entry] of this._queues) if (entry.last != null) ids[queue] = entry.last;
      return ids;
    }

    /** Close for good: no reconnection; waiting requests are rejected. */
    close() {
      this._setState("closed");
      clearTimeout(this._retryTimer);
      if (this._socket) this._socket.close(1000, "closed by the page");
      this._failPending(new CoreMQError("the client is closed"), true);
    }

    // -- the connection ------------------------------------------------------------

    _open() {
      if (this.state === "closed") return;
      let socket;
      try {
        socket = new WebSocket(this.url);
      } catch (error) {
        this._emit("error", error);
        this._retry();
        return;
      }
      this._socket = socket;
      this._lastError = null;
      socket.onmessage = (event) => this._onFrame(event.data);
      socket.onclose = (event) => this._onClose(socket, event);
      socket.onerror = () => {};  // a close event follows with what can be known
    }

    _onClose(socket, event) {
      if (socket !== this._socket) return;
      this._socket = null;
      this.connectionId = null;
      const revoked = event.code === CLOSE_CREDENTIALS && this.state !== "closed";
      const error = this._lastError;
      this._failPending(new CoreMQError(revoked ? error || "credentials revoked" : "connection lost"), revoked);
      this._emit("close", { code: event.code, reason: event.reason });
      for (const entry of this._queues.values()) entry.replay = null;
      if (revoked) {
        // The same credentials would be refused again: stay closed; the page decides what to do.
        clearTimeout(this._retryTimer);
        this._setState("closed");
        this._emit("revoked", { code: event.code, reason: event.reason, error });
      } else if (this.state !== "closed") {
        this._retry();
      }
    }

    _retry() {
      const step = Math.min(this.options.maxDelay, this.options.minDelay * 2 ** this._attempt);
      const delay = Math.round(step * (0.5 + Math.random() / 2));  // jitter: pages do not return in a herd
      this._attempt += 1;
      this.url = this.urls[(this.urls.indexOf(this.url) + 1) % this.urls.length];  // the next endpoint
      this._setState("reconnecting");
      this._emit("reconnecting", { attempt: this._attempt, delay });
      clearTimeout(this._retryTimer);
      this._retryTimer = setTimeout(() => this._open(), delay);
    }

    _send(frame) {
      this._socket.send(JSON.stringify(frame));
    }

    _onFrame(data) {
      let frame;
      try {
        frame = JSON.parse(data);
      } catch (error) {
        this._emit("error", new CoreMQError("the server sent invalid JSON"));
        return;
      }
      switch (frame.type) {
        case "message": this._onMessage(frame); break;
        case "welcome": this._onWelcome(frame); break;
        case "error": this._onError(frame); break;
        case "dropped": this._onDropped(frame); break;
        default: this._settle(frame);
      }
    }

    _onWelcome(frame) {
      const resuming = this._welcomed;
      const epochChanged = resuming && this.epoch !== frame.epoch;
      this._welcomed = true;
      this._attempt = 0;
      this.welcome = frame;
      this.connectionId = frame.connection_id;
      this.epoch = frame.epoch;
      this._setState("open");
      this._emit("open", frame);
      if (epochChanged) this._emit("reset", { epoch: frame.epoch });
      const queues = Array.from(this._queues.keys());
      if (queues.length) this._subscribeOnWire(queues);
      if (resuming) this._resume(epochChanged);
      const unsent = this._unsent;
      this._unsent = [];
      for (const request of unsent) this._transmit(request);
    }

    /**
     * Ask for what each queue missed since its last message; hold live messages until the answer.
     * After a broker restart (a new epoch) a queue whose answer says `continued` (a durable queue)
     * kept its numbering and resumes the same way; the others' ids started again at 1, and their
     * whole new history is read in a second request.
     */
    _resume(epochChanged) {
      const since = {};
      for (const [queue, entry] of this._queues) {
        const position = entry.last ?? entry.baseline;
        if (position == null) continue;  // never positioned: nothing to resume from
        since[queue] = position;
        entry.replay = [];
      }
      const names = Object.keys(since);
      if (!names.length) return;
      const failed = (queues) => (error) => {
        for (const queue of queues) this._flushReplay(queue);
        if (error.frame) this._emit("error", error);
      };
      this._request({ action: "history", queues: names, since, limit: this.options.historyPage }, true).then(
        (answer) => {
          const restarted = [];
          for (const queue of names) {
            const sequence = (answer.sequence || {})[queue] || {};
            if (epochChanged && !sequence.continued) restarted.push(queue);
            else this._replay(queue, answer, since[queue], false);
          }
          if (!restarted.length) return;
          const whole = Object.fromEntries(restarted.map((queue) => [queue, null]));
          this._request({ action: "history", queues: restarted, since: whole, limit: this.options.historyPage }, true).then(
            (again) => { for (const queue of restarted) this._replay(queue, again, null, true); },
            failed(restarted),
          );
        },
        failed(names),
      );
    }

    _replay(queue, answer, since, epochChanged) {
      const entry = this._queues.get(queue);
      if (!entry || !entry.replay) return;
      const entries = (answer.history || {})[queue] || [];
      const sequence = (answer.sequence || {})[queue] || {};
      let fresh;
      if (!epochChanged && !(sequence.last < since)) {
        if (sequence.first != null && sequence.first > since + 1) {
          this._emit("gap", { queue, from: since + 1, to: sequence.first - 1 });
        }
        fresh = entries.filter((item) => item.id > (entry.last ?? since));
      } else {
        // The queue's ids started again at 1 (its broker restarted and it is not durable). A
        // message was seen if its id and its send time are both no later than those of the last
        // one seen (which only a broker that says nothing of `continued` can give).
        const seen = (item) => entry.last != null && item.id <= entry.last && item.sent <= entry.lastSent;
        fresh = entries.filter((item) => !seen(item));
        const first = fresh[0];
        if (first && first === entries[0] && first.id > 1 && first.id !== (entry.last ?? 0) + 1) {
          this._emit("gap", { queue, from: entry.last != null && first.id > entry.last ? entry.last + 1 : 1, to: first.id - 1 });
        }
        entry.last = null;
        entry.lastSent = null;
        entry.baseline = sequence.last ?? 0;  // the new numbering's position until a message comes
      }
      for (const item of fresh) this._deliver(queue, entry, item, true);
      if ((answer.more || {})[queue]) {
        // The next page; live messages still wait. A size-cut answer may hold none of this
        // queue (earlier queues filled it): ask again from the same id.
        this._fetch(queue, entries.length ? entries[entries.length - 1].id : since);
        return;
      }
      this._flushReplay(queue);
    }

    /** Ask for one page of `queue`'s history after id `position` and replay it (live messages are held). */
    _fetch(queue, position) {
      this._request({ action: "history", queues: [queue], since: { [queue]: position }, limit: this.options.historyPage }, true).then(
        (answer) => this._replay(queue, answer, position, false),
        () => this._flushReplay(queue),
      );
    }

    _flushReplay(queue) {
      const entry = this._queues.get(queue);
      if (!entry || !entry.replay) return;
      const held = entry.replay;
      entry.replay = null;
      for (const frame of held) {
        if (frame.type === "dropped") this._onDropped(frame);
        else this._onMessage(frame, false);  // a hole left now is a gap
      }
    }

    /**
     * The server dropped ids `first`..`last` of a queue on their way to this page (its link to the
     * broker was too slow): fetch them from history, holding what comes meanwhile; only what history
     * no longer holds becomes a gap. Arriving while history is being fetched, it waits its turn.
     */
    _onDropped(frame) {
      const entry = this._queues.get(frame.queue);
      if (!entry) return;
      if (entry.replay) {
        entry.replay.push(frame);
        return;
      }
      const position = entry.last ?? entry.baseline;
      if (position == null || frame.last == null || frame.last <= position) return;  // nothing this page lacks
      if (this.state === "open") this._fill(frame.queue, entry, position, null);
    }

    /** A live message skipped ids (or some were dropped): hold it and fetch the missing ones from history first. */
    _fill(queue, entry, position, frame) {
      entry.replay = frame ? [frame] : [];
      this._fetch(queue, position);
    }

    _subscribeOnWire(queues) {
      this._request({ action: "subscribe", queues }, true).then(
        (answer) => {
          for (const queue of queues) {
            const entry = this._queues.get(queue);
            if (!entry) continue;
            const sequence = (answer.sequence || {})[queue];
            if (entry.last == null && entry.baseline == null && sequence) entry.baseline = sequence.last;
            entry.resolve(answer);
          }
        },
        (error) => {
          if (!error.frame) return;  // the connection dropped: the next welcome subscribes again
          if (queues.length > 1) {
            for (const queue of queues) this._subscribeOnWire([queue]);  // find the one refused
            return;
          }
          const entry = this._queues.get(queues[0]);
          if (entry) {  // refused by the server: give up on it
            this._queues.delete(queues[0]);
            entry.reject(error);
            this._emit("error", error);
          }
        },
      );
    }

    _onMessage(frame, fill = true) {
      if (frame.queue === this.connectionId) {
        this._emit("direct", frame.message, metaOf(frame, false));
        return;
      }
      const entry = this._queues.get(frame.queue);
      if (!entry) return;
      if (entry.replay) {
        entry.replay.push(frame);
        return;
      }
      const position = entry.last ?? entry.baseline;
      if (frame.id != null && position != null) {
        if (frame.id <= position && entry.last != null) return;  // already delivered
        if (frame.id > position + 1) {
          if (fill && this.state === "open") {
            this._fill(frame.queue, entry, position, frame);
            return;
          }
          this._emit("gap", { queue: frame.queue, from: position + 1, to: frame.id - 1 });
        }
      }
      this._deliver(frame.queue, entry, frame, false);
    }

    _deliver(queue, entry, item, replayed) {
      if (item.id != null) {
        entry.last = item.id;
        entry.lastSent = item.sent;
      }
      const meta = metaOf(Object.assign({ queue }, item), replayed);
      for (const callback of Array.from(entry.callbacks)) {
        try {
          callback(item.message, meta);
        } catch (error) {
          setTimeout(() => { throw error; });
        }
      }
      this._emit("message", item.message, meta);
    }

    // -- requests ------------------------------------------------------------------

    _request(frame, internal = false) {
      return new Promise((resolve, reject) => {
        const request = { frame: Object.assign({ ref: this._nextRef++ }, frame), resolve, reject, internal, timer: null };
        request.timer = setTimeout(() => {
          this._pending.delete(request.frame.ref);
          this._unsent = this._unsent.filter((other) => other !== request);
          reject(new CoreMQError(`no answer within ${this.options.timeout} ms`));
        }, this.options.timeout);
        if (this.state === "open" && this._socket) this._transmit(request);
        else if (!internal) this._unsent.push(request);
        else { clearTimeout(request.timer); reject(new CoreMQError("not connected")); }
      });
    }

    _transmit(request) {
      this._pending.set(request.frame.ref, request);
      this._send(request.frame);
    }

    _settle(frame) {
      const request = this._pending.get(frame.ref);
      if (!request) return;
      this._pending.delete(frame.ref);
      clearTimeout(request.timer);
      request.resolve(frame);
    }

    _onError(frame) {
      const request = frame.ref != null ? this._pending.get(frame.ref) : null;
      const error = new CoreMQError(frame.error, frame);
      if (!request) {
        if (frame.ref == null) this._lastError = frame.error;
        this._emit("error", error);
        return;
      }
      this._pending.delete(frame.ref);
      clearTimeout(request.timer);
      request.reject(error);
    }

    /** Reject requests sent on a lost connection (their fate is unknown); keep unsent ones unless closing. */
    _failPending(error, all) {
      const failed = Array.from(this._pending.values());
      this._pending.clear();
      if (all) {
        failed.push(...this._unsent);
        this._unsent = [];
        for (const entry of this._queues.values()) entry.reject(error);
      }
      for (const request of failed) {
        clearTimeout(request.timer);
        request.reject(error);
      }
    }
  }

  /** What the client knows about one subscribed queue. */
  class QueueState {
    constructor() {
      this.callbacks = new Set();
      this.last = null;       // id of the last message delivered (this epoch)
      this.lastSent = null;   // and its send time
      this.baseline = null;   // the queue's last id when first subscribed, before any message
      this.replay = null;     // live messages held while history is fetched
      this.settled = false;
      this.ready = new Promise((resolve, reject) => {
        this._resolve = resolve;
        this._reject = reject;
      });
      this.ready.catch(() => {});  // a refusal is also reported as an "error" event
    }

    resolve(value) {
      if (!this.settled) { this.settled = true; this._resolve(value); }
    }

    reject(error) {
      if (!this.settled) { this.settled = true; this._reject(error); }
    }
  }

  function metaOf(item, replayed) {
    return { queue: item.queue, id: item.id, sender: item.sender, sent: item.sent, replayed };
  }

  function toWebSocketUrl(url) {
    const base = typeof location !== "undefined" ? location.href : "http://localhost/";
    const resolved = new URL(url, base);
    if (resolved.protocol === "http:") resolved.protocol = "ws:";
    if (resolved.protocol === "https:") resolved.protocol = "wss:";
    return resolved.href;
  }

  CoreMQ.CoreMQError = CoreMQError;
  CoreMQ.CLOSE_CREDENTIALS = CLOSE_CREDENTIALS;
  CoreMQ.CLOSE_RESTART = CLOSE_RESTART;
  CoreMQ.CLOSE_TRY_LATER = CLOSE_TRY_LATER;
  global.CoreMQ = CoreMQ;
  if (typeof module !== "undefined" && module.exports) module.exports = CoreMQ;
})(typeof window !== "undefined" ? window : globalThis);
