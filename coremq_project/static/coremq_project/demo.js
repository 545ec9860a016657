/* The home page's live demo: a chat room and a counter, both over coremq.js. */
(function () {
  "use strict";

  const { chatQueue, counterQueue } = window.COREMQ_DEMO;
  const $ = (id) => document.getElementById(id);
  const mq = new CoreMQ("/ws/coremq/");
  window.demo = { mq };  // for the browser tests and for playing in the console

  // -- connection state -----------------------------------------------------------

  mq.on("state", (state) => {
    $("connection").dataset.state = state;
    $("state").textContent = state;
    if (state !== "open") $("connection-id").replaceChildren();
  });
  mq.on("open", (welcome) => {
    showConnectionId(welcome.connection_id);
    log(`connected as ${shortId(welcome.connection_id)}`);
  });

  // "<bridge id>/<n>": the tabs of one web process share the bridge id, so the header elides
  // that part when space is short and always shows the /<n> that tells this tab apart.
  function showConnectionId(id) {
    const slash = id.indexOf("/");
    const head = document.createElement("span");
    head.className = "id-head";
    head.textContent = slash < 0 ? id : id.slice(0, slash);
    const tail = document.createElement("span");
    tail.className = "id-tail";
    tail.textContent = slash < 0 ? "" : id.slice(slash);
    $("connection-id").replaceChildren(head, tail);
  }
  mq.on("reconnecting", ({ attempt, delay }) => log(`reconnecting in ${(delay / 1000).toFixed(1)} s (attempt ${attempt})`));
  mq.on("reset", () => log("the broker restarted: catching up from its history"));
  mq.on("gap", ({ queue, from, to }) => log(`messages ${from}–${to} of ${queue} were lost`, "warn"));
  mq.on("error", (error) => log(error.message, "warn"));
  mq.on("direct", (message, meta) => log(`direct message from ${shortId(meta.sender)}: ${JSON.stringify(message)}`));

  function log(text, level = "info") {
    const item = document.createElement("li");
    item.className = level;
    const time = document.createElement("time");
    time.textContent = new Date().toLocaleTimeString();
    item.append(time, " ", text);
    const list = $("log");
    list.prepend(item);
    while (list.children.length > 30) list.lastChild.remove();
  }

  // -- chat -------------------------------------------------------------------------

  const nameInput = $("chat-name");
  nameInput.value = localStorage.getItem("coremq-demo-name") || `guest-${Math.floor(Math.random() * 900 + 100)}`;
  nameInput.addEventListener("change", () => localStorage.setItem("coremq-demo-name", nameInput.value));

  const shown = new Set();

  function showChat(message, meta) {
    // Ids start again at 1 when the broker restarts: a message is known by its epoch and its id.
    const key = `${mq.epoch} ${meta.id}`;
    if (meta.id != null && shown.has(key)) return;
    if (meta.id != null) shown.add(key);
    const list = $("chat-messages");
    list.querySelector(".empty")?.remove();
    const text = typeof message === "string" ? message : message.text ?? JSON.stringify(message);
    const name = typeof message === "object" && message && message.name ? message.name : shortId(meta.sender);
    const item = document.createElement("li");
    item.dataset.id = meta.id;
    item.dataset.epoch = mq.epoch;
    if (meta.sender && meta.sender === mq.connectionId) item.classList.add("mine");
    if (meta.replayed) item.classList.add("replayed");
    const head = document.createElement("div");
    head.className = "meta";
    const who = document.createElement("strong");
    who.textContent = name;
    const when = document.createElement("time");
    when.textContent = meta.sent ? new Date(meta.sent * 1000).toLocaleTimeString() : "";
    head.append(who, " ", when, meta.replayed ? " · caught up" : "");
    const body = document.createElement("p");
    body.textContent = text;
    item.append(head, body);
    // Keep the room in id order, whatever arrived first (live, history, catch-up).
    const after = Array.from(list.children).find(
      (other) => other.dataset.epoch === mq.epoch && Number(other.dataset.id) > Number(meta.id));
    list.insertBefore(item, after || null);
    list.scrollTop = list.scrollHeight;
  }

  mq.subscribe(chatQueue, showChat).then(async () => {
    log(`subscribed to ${chatQueue}`);
    const { history } = await mq.history(chatQueue);
    for (const entry of history[chatQueue] || []) showChat(entry.message, Object.assign({ queue: chatQueue }, entry));
  });

  $("chat-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("chat-text");
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    try {
      await mq.publish(chatQueue, { name: nameInput.value || "guest", text });
    } catch (error) {
      log(`not sent: ${error.message}`, "warn");
      input.value = text;
    }
  });

  // -- counter ------------------------------------------------------------------------

  let counted = 0;
  const counter = $("counter-value");

  function showCounter(message) {
    counted = typeof message.value === "number" ? message.value : counted + (message.by || 0);
    counter.textContent = counted.toLocaleString();
    counter.classList.remove("bump");
    void counter.offsetWidth;  // restart the animation
    counter.classList.add("bump");
  }

  mq.subscribe(counterQueue, showCounter).then(async () => {
    log(`subscribed to ${counterQueue}`);
    const { history } = await mq.history(counterQueue);
    const entries = history[counterQueue] || [];
    const latest = entries[entries.length - 1];
    if (latest && counted === 0) showCounter(latest.message);
  });

  $("counter-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    form.set("by", event.submitter ? event.submitter.value : "1");
    const response = await fetch(event.target.action, { method: "POST", body: form });
    if (!response.ok) log(`the view answered ${response.status}`, "warn");
  });

  function shortId(id) {
    if (!id) return "someone";
    const [connection, browser] = id.split("/");
    return browser ? `${connection.slice(0, 8)}/${browser}` : connection.slice(0, 8);
  }
})();
