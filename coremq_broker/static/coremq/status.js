// CoreMQ live status page: polls status.json and redraws in place, without reloading.
// No build step and no dependencies. Everything that comes from the broker is
// written with textContent, never as HTML: queue names and peers are user input.
(function () {
  "use strict";

  const root = document.getElementById("coremq-status");
  if (!root) return;
  const statusUrl = root.dataset.statusUrl;
  const actionUrl = root.dataset.actionUrl;
  const loginUrl = root.dataset.loginUrl;
  const pollMs = Number(root.dataset.pollMs) || 500;
  const csrfToken = root.querySelector("#cmq-csrf [name=csrfmiddlewaretoken]").value;

  // -- formatting -------------------------------------------------------------

  const pad = (n) => String(n).padStart(2, "0");
  const fmt = {
    int: (n) => (n == null ? "–" : Math.round(n).toLocaleString("en")),
    rate: (n) => (n == null ? "–" : (n < 10 ? n.toFixed(2) : n.toFixed(1)) + "/s"),
    bytes(n) {
      if (n == null) return "–";
      const units = ["B", "KiB", "MiB", "GiB", "TiB"];
      let i = 0;
      while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
      return (i ? n.toFixed(1) : String(n)) + " " + units[i];
    },
    duration(s) {
      if (s == null) return "–";
      s = Math.max(0, Math.floor(s));
      const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
      if (d) return `${d}d ${h}h`;
      if (h) return `${h}h ${pad(m)}m`;
      if (m) return `${m}m ${pad(s % 60)}s`;
      return `${s % 60}s`;
    },
    ago: (t, now) => (t == null ? "never" : fmt.duration(now - t) + " ago"),
    clock: (t) => new Date(t * 1000).toLocaleTimeString("en-GB"),
  };

  // -- the two tables -------------------------------------------------------------
  // A column: key (sort key and default value), label, num (numeric, right-aligned),
  // value(item) for sorting when not item[key], text(item, snapshot) for display, title(item).

  const publicSubscriptions = (c) => c.subscriptions.filter((q) => q !== c.id && !q.startsWith(c.id + "/"));

  const TABLES = {
    connections: {
      id: (c) => c.id,
      sort: { key: "connected_since", dir: -1 },
      empty: "No connections.",
      columns: [
        { key: "id", label: "Connection", text: (c, s) => c.id.slice(0, 8) + (c.id === s.observer ? " (this page)" : ""), title: (c) => c.id },
        { key: "transport", label: "Transport" },
        { key: "peer", label: "Peer" },
        { key: "user", label: "User", text: (c) => c.user || "anonymous" },
        { key: "connected_since", label: "Connected", num: true, text: (c, s) => fmt.ago(c.connected_since, s.time), title: (c) => new Date(c.connected_since * 1000).toISOString() },
        { key: "subscriptions", label: "Subscriptions", value: (c) => publicSubscriptions(c).join(" "), text: (c) => publicSubscriptions(c).join(", ") || "–", title: (c) => publicSubscriptions(c).join("\n") },
        { key: "messages_in", label: "Msgs in", num: true, text: (c) => fmt.int(c.messages_in) },
        { key: "messages_out", label: "Msgs out", num: true, text: (c) => fmt.int(c.messages_out) },
        { key: "bytes_in", label: "Bytes in", num: true, text: (c) => fmt.bytes(c.bytes_in) },
        { key: "bytes_out", label: "Bytes out", num: true, text: (c) => fmt.bytes(c.bytes_out) },
        { key: "buffered", label: "Buffered", num: true, text: (c) => fmt.bytes(c.buffered) },
        { key: "dropped", label: "Dropped", num: true, text: (c) => fmt.int(c.dropped) },
      ],
      actions: [{ action: "disconnect", label: "Disconnect", field: "connection", confirm: (c) => `Disconnect ${c.id}?` }],
      haystack: (c) => [c.id, c.transport, c.peer, c.user || "anonymous", ...c.subscriptions].join(" "),
    },
    queues: {
      id: (q) => q.name,
      sort: { key: "name", dir: 1 },
      empty: "No queues yet.",
      columns: [
        { key: "name", label: "Queue" },
        { key: "subscribers", label: "Subscribers", num: true, text: (q) => fmt.int(q.subscribers) },
        { key: "history", label: "History", num: true, text: (q) => `${fmt.int(q.history)} / ${fmt.int(q.history_capacity)}` },
        { key: "published", label: "Published", num: true, text: (q) => fmt.int(q.published) },
        { key: "last_id", label: "Last id", num: true, text: (q) => fmt.int(q.last_id) },
        { key: "last_publish", label: "Last publish", num: true, text: (q, s) => fmt.ago(q.last_publish, s.time), title: (q) => (q.last_publish ? new Date(q.last_publish * 1000).toISOString() : "") },
        { key: "rate", label: "Rate (1 min)", num: true, text: (q) => fmt.rate(q.rate) },
      ],
      actions: [
        { action: "purge", label: "Purge", field: "queue", confirm: (q) => `Purge the history of ${q.name}?` },
        { action: "publish-form", label: "Publish…", field: "queue" },
      ],
      haystack: (q) => q.name,
    },
    // The cluster's live nodes, from their heartbeats (snapshot.cluster: the Redis engine only).
    nodes: {
      id: (n) => n.name,
      sort: { key: "name", dir: 1 },
      empty: "No node has sent a heartbeat.",
      columns: [
        { key: "name", label: "Node", text: (n) => n.name + (n.self ? " (answered)" : "") },
        { key: "address", label: "Address" },
        { key: "uptime", label: "Uptime", num: true, text: (n) => fmt.duration(n.uptime) },
        { key: "connections", label: "Connections", num: true, text: (n) => fmt.int(n.connections) },
        { key: "queues", label: "Queues", num: true, text: (n) => fmt.int(n.queues) },
        { key: "rate_in", label: "In/s", num: true, text: (n) => fmt.rate(n.rate_in) },
        { key: "rate_out", label: "Out/s", num: true, text: (n) => fmt.rate(n.rate_out) },
        { key: "rss_bytes", label: "Memory", num: true, text: (n) => fmt.bytes(n.rss_bytes) },
      ],
      actions: [],
      haystack: (n) => `${n.name} ${n.address}`,
    },
  };

  class Table {
    constructor(name, spec) {
      this.name = name;
      this.spec = spec;
      this.el = root.querySelector(`table[data-table="${name}"]`);
      this.body = this.el.tBodies[0];
      this.count = root.querySelector(`[data-count="${name}"]`);
      this.filterInput = root.querySelector(`[data-filter="${name}"]`);
      this.sort = { ...spec.sort };
      this.rows = new Map(); // item id -> <tr>
      this.items = [];
      this.snapshot = null;
      this.emptyRow = null;
      this.renderHead();
      this.filterInput.addEventListener("input", () => this.render());
      this.body.addEventListener("click", (event) => this.onClick(event));
    }

    renderHead() {
      const tr = document.createElement("tr");
      for (const column of this.spec.columns) {
        const th = document.createElement("th");
        th.scope = "col";
        th.dataset.key = column.key;
        if (column.num) th.className = "cmq-num";
        const button = document.createElement("button");
        button.type = "button";
        button.className = "cmq-sort";
        button.textContent = column.label;
        button.addEventListener("click", () => this.sortBy(column.key));
        th.appendChild(button);
        tr.appendChild(th);
      }
      const th = document.createElement("th");
      th.textContent = "Actions";
      tr.appendChild(th);
      this.el.tHead.appendChild(tr);
      this.markSort();
    }

    sortBy(key) {
      this.sort = this.sort.key === key ? { key, dir: -this.sort.dir } : { key, dir: 1 };
      this.markSort();
      this.render();
    }

    markSort() {
      for (const th of this.el.tHead.querySelectorAll("th[data-key]")) {
        const active = th.dataset.key === this.sort.key;
        th.setAttribute("aria-sort", active ? (this.sort.dir > 0 ? "ascending" : "descending") : "none");
      }
    }

    update(items, snapshot) {
      this.items = items;
      this.snapshot = snapshot;
      this.render();
    }

    visibleItems() {
      const needle = this.filterInput.value.trim().toLowerCase();
      const spec = this.spec;
      const column = spec.columns.find((c) => c.key === this.sort.key) || spec.columns[0];
      const value = column.value || ((item) => item[column.key]);
      const dir = this.sort.dir;
      return this.items
        .filter((item) => !needle || spec.haystack(item).toLowerCase().includes(needle))
        .sort((a, b) => {
          const x = value(a), y = value(b);
          if (x == null && y == null) return 0;
          if (x == null) return dir;      // missing values last, either way
          if (y == null) return -dir;
          const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
          return order * dir || String(spec.id(a)).localeCompare(String(spec.id(b)));
        });
    }

    render() {
      if (!this.snapshot) return;
      const visible = this.visibleItems();
      const alive = new Set(this.items.map(this.spec.id));
      for (const [id, tr] of this.rows) {
        if (!alive.has(id)) { tr.remove(); this.rows.delete(id); }
      }
      const wanted = visible.map((item) => this.row(item));
      if (!wanted.length) wanted.push(this.empty(this.items.length ? "No matches." : this.spec.empty));
      const current = Array.from(this.body.children);
      if (current.length !== wanted.length || current.some((tr, i) => tr !== wanted[i])) {
        for (const tr of current) if (!wanted.includes(tr)) tr.remove();
        wanted.forEach((tr, i) => { if (this.body.children[i] !== tr) this.body.insertBefore(tr, this.body.children[i] || null); });
      }
      this.count.textContent = visible.length === this.items.length
        ? `(${this.items.length})` : `(${visible.length} of ${this.items.length})`;
    }

    row(item) {
      const id = this.spec.id(item);
      let tr = this.rows.get(id);
      if (!tr) {
        tr = document.createElement("tr");
        tr.dataset.id = id;
        for (const column of this.spec.columns) {
          const td = document.createElement("td");
          td.dataset.key = column.key;
          if (column.num) td.className = "cmq-num";
          tr.appendChild(td);
        }
        const td = document.createElement("td");
        td.className = "cmq-actions";
        for (const action of this.spec.actions) {
          const button = document.createElement("button");
          button.type = "button";
          button.className = "button cmq-action";
          button.dataset.action = action.action;
          button.textContent = action.label;
          td.appendChild(button);
        }
        tr.appendChild(td);
        this.rows.set(id, tr);
      }
      tr.item = item;
      this.spec.columns.forEach((column, i) => {
        const td = tr.cells[i];
        const text = column.text ? column.text(item, this.snapshot) : String(item[column.key] ?? "–");
        if (td.textContent !== text) td.textContent = text;
        const title = column.title ? column.title(item) : "";
        if (td.title !== title) td.title = title;
      });
      return tr;
    }

    empty(text) {
      if (!this.emptyRow) {
        this.emptyRow = document.createElement("tr");
        const td = document.createElement("td");
        td.colSpan = this.spec.columns.length + 1;
        td.className = "cmq-empty";
        this.emptyRow.appendChild(td);
      }
      this.emptyRow.cells[0].textContent = text;
      return this.emptyRow;
    }

    onClick(event) {
      const button = event.target.closest("button[data-action]");
      if (!button) return;
      const tr = button.closest("tr");
      const spec = this.spec.actions.find((a) => a.action === button.dataset.action);
      if (!tr || !tr.item || !spec) return;
      const target = this.spec.id(tr.item);
      if (spec.action === "publish-form") {
        publishForm.elements.queue.value = target;
        publishForm.elements.message.focus();
        publishForm.scrollIntoView({ block: "nearest" });
        return;
      }
      if (spec.confirm && !window.confirm(spec.confirm(tr.item))) return;
      act(spec.action, { [spec.field]: target });
    }
  }

  const tables = Object.fromEntries(Object.entries(TABLES).map(([name, spec]) => [name, new Table(name, spec)]));

  // -- broker cards and chart -------------------------------------------------------

  function setField(name, text) {
    for (const el of root.querySelectorAll(`[data-field="${name}"]`)) {
      if (el.textContent !== text) el.textContent = text;
    }
  }

  function renderBroker(snapshot) {
    const b = snapshot.broker;
    const buffered = snapshot.connections.reduce((sum, c) => sum + (c.buffered || 0), 0);
    setField("uptime", fmt.duration(b.uptime));
    setField("version", b.version || "–");
    setField("connections", fmt.int(b.connections));
    setField("connections_total", `${fmt.int(b.connections_total)} since start`);
    setField("queues", fmt.int(b.queues));
    setField("queues_detail", `${b.queues_limit ? `of ${fmt.int(b.queues_limit)}, ` : ""}${fmt.int(b.queues_forgotten || 0)} forgotten`);
    setField("messages_in", fmt.int(b.messages_in));
    setField("rate_in", fmt.rate(b.rate_in) + " last minute");
    setField("messages_out", fmt.int(b.messages_out));
    setField("rate_out", fmt.rate(b.rate_out) + " last minute");
    setField("rss_bytes", fmt.bytes(b.rss_bytes));
    setField("open_fds", fmt.int(b.open_fds));
    setField("errors", fmt.int(b.errors));
    setField("denials", fmt.int(b.denials));
    setField("auth_failures", fmt.int(b.auth_failures || 0));
    setField("auth_detail", `${fmt.int(b.auth_refused || 0)} refused unchecked, ${fmt.int(b.auth_blocked || 0)} blocked`);
    setField("slow_consumers", fmt.int(b.slow_consumers));
    setField("history_bytes", fmt.bytes(b.history_bytes || 0));
    setField("history_detail", `of ${fmt.bytes(b.history_bytes_limit)}, ${fmt.int(b.history_evicted || 0)} evicted, `
      + `${fmt.int(b.history_pages || 0)} replies paged, ${fmt.int(b.history_skipped || 0)} too large`);
    setField("timeouts", fmt.int(b.timeouts || 0));
    setField("bounds_refused", fmt.int((b.refused_per_address || 0) + (b.queues_refused || 0)));
    const queuesRefused = b.queues_refused || 0;
    setField("bounds_detail", `${fmt.int(b.refused_per_address || 0)} per address, ${fmt.int(queuesRefused)} new queue${queuesRefused === 1 ? "" : "s"}`);
    setField("buffered", fmt.bytes(buffered));
    renderDurable(b.durable || { state: "unused" });
    text("#cmq-server", `${b.server} on ${b.address}`);
    text("#cmq-source", snapshot.source === "local" ? "in-process" : "over the protocol");
    text("#cmq-updated", fmt.clock(snapshot.time));
    const names = root.querySelector("#cmq-queue-names");
    const wanted = snapshot.queues.map((q) => q.name).sort();
    if (Array.from(names.options, (o) => o.value).join("\n") !== wanted.join("\n")) {
      names.replaceChildren(...wanted.map((name) => Object.assign(document.createElement("option"), { value: name })));
    }
  }

  // A node of a cluster (the Redis engine): its nodes and totals; the section is hidden otherwise.
  function renderCluster(snapshot) {
    const cluster = snapshot.cluster;
    root.querySelector("#cmq-cluster").hidden = !cluster;
    if (!cluster) return;
    const t = cluster.totals;
    text("#cmq-cluster-totals", `${fmt.int(t.nodes)} node${t.nodes === 1 ? "" : "s"}, ${fmt.int(t.connections)} connections, ${fmt.rate(t.rate_in)} in, ${fmt.rate(t.rate_out)} out; Redis at ${cluster.redis} ${cluster.state === "ok" ? "up" : "unavailable"}`);
    tables.nodes.update(cluster.nodes, snapshot);
  }

  // The durable history's writer: OK, or unavailable with the reason (a full or read-only disk).
  function renderDurable(d) {
    if (d.engine === "redis") {  // several nodes: history lives in Redis (the cluster section says more)
      setField("durable_state", d.state === "ok" ? "In Redis" : "Unavailable");
      setField("durable_detail", d.state === "ok" ? `node ${d.node}` : d.error || "Redis unreachable");
      root.querySelector("#cmq-durable").classList.toggle("cmq-failing", d.state !== "ok");
      return;
    }
    const states = { ok: "OK", unavailable: "Unavailable", unused: "Not in use" };
    setField("durable_state", states[d.state] || d.state);
    let detail = "no durable queue yet";
    if (d.state === "unavailable") detail = d.error;
    else if (d.state === "ok") detail = `${fmt.int(d.pending)} pending, ${fmt.bytes(d.free_bytes)} free`;
    setField("durable_detail", detail);
    root.querySelector("#cmq-durable").classList.toggle("cmq-failing", d.state === "unavailable");
  }

  // The store served over the memcached protocol by this process (null: none here).
  function renderStore(s) {
    if (!s) {
      setField("store_items", "Not served here");
      setField("store_detail", "run_coremq serves it unless --no-memcached");
      return;
    }
    setField("store_items", `${fmt.int(s.items)} items`);
    setField("store_detail", `${fmt.bytes(s.bytes)} of ${fmt.bytes(s.limit_bytes)}, ${fmt.int(s.hits)} hits, `
      + `${fmt.int(s.misses)} misses, ${fmt.int(s.evictions)} evicted, ${fmt.int(s.connections)} connections`);
  }

  // The Channels layer of this process: messages dropped for full channels, the top channels and groups.
  function renderLayerDrops(layer) {
    const top = (counts) => Object.entries(counts || {}).sort((a, b) => b[1] - a[1]).slice(0, 3)
      .map(([name, n]) => `${name} ${fmt.int(n)}`).join(", ");
    setField("layer_dropped", fmt.int(layer.total || 0));
    const groups = top(layer.groups);
    const channels = top(layer.channels);
    setField("layer_detail", layer.total ? `groups: ${groups || "none"}; channels: ${channels}` : "none dropped");
  }

  const canvas = root.querySelector("#cmq-chart");

  function drawChart(series) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth, height = canvas.clientHeight;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const style = getComputedStyle(root);
    const ink = style.getPropertyValue("--body-quiet-color").trim() || "#666";
    const grid = style.getPropertyValue("--hairline-color").trim() || "#e8e8e8";
    const left = 44, right = 8, top = 10, bottom = 20;
    const plotW = width - left - right, plotH = height - top - bottom;
    const peak = Math.max(1, ...series.flatMap((s) => s.values));
    const scale = niceCeiling(peak / 4) * 4; // four gridlines at round numbers
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = ink;
    ctx.strokeStyle = grid;
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i += 1) {
      const y = top + plotH - (plotH * i) / 4;
      ctx.beginPath();
      ctx.moveTo(left, Math.round(y) + 0.5);
      ctx.lineTo(left + plotW, Math.round(y) + 0.5);
      ctx.stroke();
      ctx.fillText(compact((scale * i) / 4), left - 6, y);
    }
    ctx.textBaseline = "top";
    for (const [label, fraction, align] of [["-60 s", 0, "left"], ["-30 s", 0.5, "center"], ["now", 1, "right"]]) {
      ctx.textAlign = align;
      ctx.fillText(label, left + plotW * fraction, top + plotH + 5);
    }
    for (const { values, color } of series) {
      if (values.length < 2) continue;
      const step = plotW / (values.length - 1);
      const point = (v, i) => [left + i * step, top + plotH - (plotH * v) / scale];
      ctx.beginPath();
      values.forEach((v, i) => { const [x, y] = point(v, i); i ? ctx.lineTo(x, y) : ctx.moveTo(x, y); });
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      ctx.lineJoin = "round";
      ctx.stroke();
      ctx.lineTo(left + plotW, top + plotH);
      ctx.lineTo(left, top + plotH);
      ctx.closePath();
      ctx.globalAlpha = 0.12;
      ctx.fillStyle = color;
      ctx.fill();
      ctx.globalAlpha = 1;
    }
  }

  function niceCeiling(value) {
    const magnitude = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * magnitude >= value) return step * magnitude;
    return 10 * magnitude;
  }

  const compact = (n) => (n >= 1e6 ? `${+(n / 1e6).toFixed(1)}M` : n >= 1e3 ? `${+(n / 1e3).toFixed(1)}k` : `${+n.toFixed(1)}`);

  // -- polling ------------------------------------------------------------------------

  let last = null;
  let timer = null;

  function text(selector, value) {
    const el = root.querySelector(selector);
    if (el.textContent !== value) el.textContent = value;
  }

  function setState(ok, message) {
    root.classList.toggle("cmq-down", !ok);
    text("#cmq-state", ok ? "Live" : "Not live");
    const error = root.querySelector("#cmq-error");
    error.hidden = ok;
    if (!ok) error.textContent = message;
  }

  function render(snapshot) {
    last = snapshot;
    renderBroker(snapshot);
    renderLayerDrops(snapshot.channel_layer || {});
    renderStore(snapshot.store);
    tables.connections.update(snapshot.connections, snapshot);
    tables.queues.update(snapshot.queues, snapshot);
    renderCluster(snapshot);
    drawChart([
      { values: snapshot.broker.rate_in_series || [], color: "#417690" },
      { values: snapshot.broker.rate_out_series || [], color: "#e0962a" },
    ]);
  }

  let inFlight = false;
  let again = false; // asked for while a request was out: poll once more right after it

  async function poll() {
    if (inFlight) { again = true; return; }
    inFlight = true;
    clearTimeout(timer);
    try {
      const response = await fetch(statusUrl, { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" });
      const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
      if (response.status === 401 || response.status === 403) {
        setState(false, "Your session has ended or is not a staff account. ");
        const link = Object.assign(document.createElement("a"), { href: loginUrl, textContent: "Log in again" });
        root.querySelector("#cmq-error").appendChild(link);
      } else if (!response.ok) {
        setState(false, `The broker cannot be asked: ${body.error || response.statusText}`);
      } else {
        render(body);
        setState(true);
      }
    } catch (error) {
      setState(false, `The web server cannot be reached: ${error.message}`);
    } finally {
      inFlight = false;
      if (again) {
        again = false;
        poll();
      } else {
        timer = setTimeout(poll, pollMs);
      }
    }
  }

  // -- actions ------------------------------------------------------------------------

  let toastTimer = null;

  function toast(message, failed) {
    const el = root.querySelector("#cmq-toast");
    el.textContent = message;
    el.classList.toggle("cmq-failed", Boolean(failed));
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.hidden = true; }, 6000);
  }

  async function act(action, fields) {
    const body = new FormData();
    for (const [key, value] of Object.entries(fields)) body.append(key, value);
    try {
      const response = await fetch(actionUrl.replace("ACTION", action), {
        method: "POST", body, credentials: "same-origin",
        headers: { Accept: "application/json", "X-CSRFToken": csrfToken },
      });
      const result = await response.json().catch(() => ({ ok: false, error: `${response.status} ${response.statusText}` }));
      toast(result.ok ? result.message : `Failed: ${result.error}`, !result.ok);
      return result;
    } catch (error) {
      toast(`Failed: ${error.message}`, true);
      return { ok: false };
    } finally {
      poll();
    }
  }

  const publishForm = root.querySelector("#cmq-publish");
  publishForm.addEventListener("submit", (event) => {
    event.preventDefault();
    act("publish", { queue: publishForm.elements.queue.value.trim(), message: publishForm.elements.message.value });
  });

  window.addEventListener("resize", () => { if (last) render(last); });
  poll();
})();
