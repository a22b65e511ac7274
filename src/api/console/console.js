// The backfilld operator console: lists every job from the JSON API, refreshes itself, and
// offers the actions the token's role allows. Every value from a job is put in the page as
// text (textContent), never as markup. The token lives in this tab's sessionStorage only.
"use strict";

(() => {
  const TOKEN_KEY = "backfilld.token";
  const REFRESH_MS = 2500;
  // The states in which a job can be re-tuned (the API refuses completed and cancelled ones).
  const LIVE = ["queued", "running", "paused", "failed"];

  const $ = (id) => document.getElementById(id);
  /** The role of the token in use ("read", "operate", "admin"), once the daemon said it. */
  let role = null;
  /** Job name → its card: cards are updated in place, so a refresh never flickers. */
  const cards = new Map();
  let timer = null;

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  /** Calls the API; the error's message is the daemon's own `error` text. */
  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (token()) headers.Authorization = "Bearer " + token();
    const init = { method, headers, credentials: "omit", cache: "no-store" };
    if (method !== "GET") {
      // The daemon refuses a state change without an explicit JSON content type.
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body || {});
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, "the daemon does not answer (" + e.message + ")");
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const said = (data && data.error) || text || response.statusText;
      throw new ApiError(response.status, said + " (HTTP " + response.status + ")");
    }
    return data;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = !message;
  }

  const mayOperate = () => role === "operate" || role === "admin";

  // --- formatting ---------------------------------------------------------------------------
  const number = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en"));

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    let s = Math.round(seconds);
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    s %= 60;
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + s + "s";
    return s + "s";
  }

  const time = (iso) => (iso ? new Date(iso).toLocaleString() : "—");

  // --- a job's card -------------------------------------------------------------------------
  /** A `dt`/`dd` pair in `list`; returns the `dd` to update. */
  function fact(list, label) {
    list.appendChild(el("dt", null, label));
    const value = el("dd");
    list.appendChild(value);
    return value;
  }

  function makeCard(name) {
    const card = { name, root: el("section", "job") };
    card.root.dataset.job = name;
    const head = el("div", "head");
    head.appendChild(el("h2", "name", name));
    card.state = el("span", "state");
    head.appendChild(card.state);
    card.root.appendChild(head);

    const line = el("div", "progress-line");
    card.bar = el("progress", "bar");
    card.bar.max = 1;
    card.percent = el("span", "percent");
    line.append(card.bar, card.percent);
    card.root.appendChild(line);

    const facts = el("dl", "facts");
    card.rows = fact(facts, "Rows");
    card.rate = fact(facts, "Rate");
    card.eta = fact(facts, "ETA");
    card.pass = fact(facts, "Pass");
    card.pending = fact(facts, "Pending rows");
    card.batch = fact(facts, "Batch size");
    card.throttled = fact(facts, "Throttled");
    card.error = fact(facts, "Last error");
    card.root.appendChild(facts);

    if (mayOperate()) card.root.appendChild(controls(card));
    card.problem = el("p", "card-error");
    card.problem.hidden = true;
    card.root.appendChild(card.problem);

    const partitions = el("details", "partitions");
    card.partitionsTitle = el("summary");
    partitions.appendChild(card.partitionsTitle);
    const table = el("table");
    const header = el("tr");
    ["#", "State", "Cursor", "Scanned", "Updated", "Owner"].forEach((h) =>
      header.appendChild(el("th", null, h))
    );
    table.appendChild(el("thead")).appendChild(header);
    card.partitions = el("tbody");
    table.appendChild(card.partitions);
    partitions.appendChild(table);
    card.root.appendChild(partitions);

    card.eventsBox = el("details", "events");
    card.eventsBox.appendChild(el("summary", null, "Event log"));
    card.events = el("ol");
    card.eventsBox.appendChild(card.events);
    card.eventsBox.addEventListener("toggle", () => {
      if (card.eventsBox.open) loadEvents(card);
    });
    card.root.appendChild(card.eventsBox);
    return card;
  }

  function controls(card) {
    const box = el("div", "controls");
    const action = (label, verb) => {
      const button = el("button", "action " + verb, label);
      button.type = "button";
      button.addEventListener("click", () => act(card, verb));
      box.appendChild(button);
      return button;
    };
    card.pause = action("Pause", "pause");
    card.resume = action("Resume", "resume");
    card.cancel = action("Cancel", "cancel");

    card.rateBox = el("span", "rate-box");
    const label = el("label", null, "Rows/s limit ");
    card.rateInput = el("input", "rate-input");
    card.rateInput.type = "number";
    card.rateInput.min = "1";
    card.rateInput.step = "1";
    card.rateInput.placeholder = "unlimited";
    card.rateInput.addEventListener("input", () => (card.rateDirty = true));
    card.rateInput.addEventListener("keydown", (e) => {
      if (e.key === "Enter") setRate(card);
    });
    label.appendChild(card.rateInput);
    card.rateSet = el("button", "set-rate", "Set");
    card.rateSet.type = "button";
    card.rateSet.addEventListener("click", () => setRate(card));
    card.rateBox.append(label, card.rateSet);
    box.appendChild(card.rateBox);
    return box;
  }

  function update(card, job) {
    card.job = job;
    card.state.textContent = job.state;
    card.state.className = "state state-" + job.state;
    card.bar.value = job.progress;
    card.percent.textContent = (job.progress * 100).toFixed(1) + "%";
    card.rows.textContent =
      number(job.rows_scanned) + " scanned · " + number(job.rows_updated) + " updated";
    const limit = job.rate_limit_rows_per_second;
    card.rate.textContent =
      number(Math.round(job.rate_rows_per_second)) +
      " rows/s" +
      (limit ? " of " + number(limit) + " limit" : " (no limit)");
    card.eta.textContent = duration(job.eta_seconds);
    card.pass.textContent = job.pass + " of " + job.passes;
    card.pending.textContent = number(job.pending_rows);
    card.batch.textContent = number(job.batch_size);
    card.throttled.textContent = job.throttled
      ? job.throttled + (job.throttle_detail ? ": " + job.throttle_detail : "")
      : "no";
    card.error.textContent = job.last_error || "—";
    card.error.classList.toggle("error-text", Boolean(job.last_error));

    if (card.pause) {
      card.pause.hidden = !["queued", "running"].includes(job.state);
      card.resume.hidden = !["paused", "failed"].includes(job.state);
      card.cancel.hidden = !["queued", "running", "paused", "failed"].includes(job.state);
      card.rateBox.hidden = !LIVE.includes(job.state);
      if (!card.rateDirty && document.activeElement !== card.rateInput) {
        card.rateInput.value = limit ? String(limit) : "";
      }
    }

    card.partitionsTitle.textContent = "Partitions (" + job.partitions.length + ")";
    const rows = job.partitions.map((p) => {
      const row = el("tr");
      [
        p.index,
        p.state,
        p.cursor ? p.cursor.join(", ") : "—",
        number(p.rows_scanned),
        number(p.rows_updated),
        p.owner || "—",
      ].forEach((v) => row.appendChild(el("td", null, v)));
      return row;
    });
    card.partitions.replaceChildren(...rows);
    if (card.eventsBox.open) loadEvents(card);
  }

  async function loadEvents(card) {
    try {
      const data = await api("GET", "/api/v1/jobs/" + encodeURIComponent(card.name) + "/events");
      const items = data.events.map((e) => {
        const item = el("li");
        item.appendChild(el("time", null, time(e.at)));
        const change = e.from_state && e.to_state ? " " + e.from_state + " → " + e.to_state : "";
        item.appendChild(el("span", "kind", " " + e.kind + change));
        item.appendChild(el("span", "actor", " by " + e.actor));
        if (e.detail) item.appendChild(el("span", "detail", " — " + e.detail));
        return item;
      });
      card.events.replaceChildren(...items);
    } catch (e) {
      card.events.replaceChildren(el("li", "error-text", "Could not load the events: " + e.message));
    }
  }

  function problem(card, message) {
    card.problem.textContent = message || "";
    card.problem.hidden = !message;
  }

  async function act(card, verb) {
    if (
      verb === "cancel" &&
      !window.confirm("Cancel job " +
        card.name +
        "? It stops and cannot be resumed; an admin can queue it again only by submitting it again with --replace.")
    ) {
      return;
    }
    const path = "/api/v1/jobs/" + encodeURIComponent(card.name) + "/" + verb;
    await change(card, verb, () => api("POST", path, {}));
  }

  async function setRate(card) {
    const text = card.rateInput.value.trim();
    const limit = text === "" ? null : Number(text);
    if (limit !== null && !(Number.isInteger(limit) && limit > 0)) {
      problem(card, "The rate limit must be a positive whole number, or empty for none.");
      return;
    }
    const path = "/api/v1/jobs/" + encodeURIComponent(card.name);
    await change(card, "set the rate limit of", () =>
      api("PATCH", path, { rows_per_second: limit })
    );
    card.rateDirty = false;
  }

  /** Runs one action with the card's buttons disabled; shows the daemon's answer. */
  async function change(card, what, call) {
    const buttons = card.root.querySelectorAll("button");
    buttons.forEach((b) => (b.disabled = true));
    try {
      const job = await call();
      problem(card, null);
      card.rateDirty = false;
      update(card, job);
    } catch (e) {
      problem(card, "Could not " + what + " " + card.name + ": " + e.message);
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  }

  // --- the list -----------------------------------------------------------------------------
  function render(jobs) {
    const main = $("jobs");
    const seen = new Set();
    jobs.forEach((job, i) => {
      seen.add(job.name);
      let card = cards.get(job.name);
      if (!card) {
        card = makeCard(job.name);
        cards.set(job.name, card);
      }
      update(card, job);
      if (main.children[i] !== card.root) main.insertBefore(card.root, main.children[i] || null);
    });
    for (const [name, card] of cards) {
      if (!seen.has(name)) {
        card.root.remove();
        cards.delete(name);
      }
    }
    $("empty").hidden = jobs.length > 0;
  }

  function clearJobs() {
    cards.clear();
    $("jobs").replaceChildren();
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      const data = await api("GET", "/api/v1/jobs");
      render(data.jobs);
      showError(null);
      $("refreshed").textContent = "updated " + new Date().toLocaleTimeString();
    } catch (e) {
      if (e.status === 401) return login();
      showError("Could not refresh the jobs: " + e.message);
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }

  /** Asks the daemon who the token is (and whether it wants one), then starts refreshing. */
  async function login() {
    clearTimeout(timer);
    try {
      const me = await api("GET", "/api/v1/whoami");
      if (me.role !== role) clearJobs(); // the buttons depend on the role
      role = me.role;
      $("who").textContent = me.tokens
        ? "signed in as " + me.name + " (" + me.role + ")"
        : "no API tokens configured: loopback only, full access";
      $("token-form").hidden = true;
      $("token-forget").hidden = !me.tokens;
      showError(null);
      refresh();
    } catch (e) {
      if (e.status === 401 || e.status === 403) {
        role = null;
        clearJobs();
        $("who").textContent = "";
        $("token-form").hidden = false;
        $("token-forget").hidden = true;
        showError(token() ? "The daemon refused that token: " + e.message : null);
        $("token").focus();
      } else {
        showError("Could not reach the daemon: " + e.message);
        timer = setTimeout(login, REFRESH_MS);
      }
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const value = $("token").value.trim();
      $("token").value = "";
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      login();
    });
    $("token-forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      role = null;
      clearJobs();
      login();
    });
    login();
  });
})();
