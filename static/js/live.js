/* Live updates for the console: one websocket per page, reconnecting by itself.
 * (data-live-throttle="<ms>" on an element slows its refreshes; the default is one a second.)
 *
 * The socket carries small JSON events ({event, payload}); the page either updates numbers in
 * place (meters, statuses, the kill-switch banner) or asks the server for a fresh fragment with
 * htmx (new rows, new approval cards), so every piece of HTML still comes from the templates.
 * Elements opt in with data-live-refresh="<event> <event>" plus hx-get/hx-trigger="live-refresh".
 */
(function () {
  "use strict";

  var body = document.body;
  if (!body) return;

  // Forms that ask first (no inline on* handlers: the console runs under a strict CSP).
  document.addEventListener("submit", function (event) {
    var question = event.target.dataset && event.target.dataset.confirm;
    if (question && !window.confirm(question)) event.preventDefault();
  });

  if (!body.dataset.liveUrl) return;

  // htmx: let form errors (422) and refusals (409) swap in like any answer.
  if (window.htmx) {
    htmx.config.responseHandling = [
      { code: "204", swap: false },
      { code: "[23]..", swap: true },
      { code: "409", swap: true, error: false },
      { code: "422", swap: true, error: false },
      { code: "[45]..", swap: false, error: true },
    ];
  }

  var BUDGETS = {
    steps: "max_steps", tool_calls: "max_tool_calls", tokens: "max_tokens",
    usd: "max_usd", seconds: "max_seconds",
  };
  var REFRESH_EVERY_MS = 1000;
  var MAX_BACKOFF_MS = 15000;

  // --- throttled fragment refreshes (first at once, then at most one per second, the last wins)
  var timers = new WeakMap();
  function refresh(el) {
    if (!window.htmx || !el.isConnected) return;
    var state = timers.get(el) || { last: 0, timer: null };
    timers.set(el, state);
    if (state.timer) return;
    var every = Number(el.dataset.liveThrottle) || REFRESH_EVERY_MS;
    var wait = Math.max(0, state.last + every - Date.now());
    state.timer = setTimeout(function () {
      state.timer = null;
      state.last = Date.now();
      if (el.isConnected) htmx.trigger(el, "live-refresh");
    }, wait);
  }
  function refreshListeners(event) {
    document.querySelectorAll("[data-live-refresh]").forEach(function (el) {
      if (el.dataset.liveRefresh.split(/\s+/).indexOf(event) >= 0) refresh(el);
    });
  }

  // --- in-place updates -------------------------------------------------------------------
  function fmt(name, value) {
    if (value === null || value === undefined) return "∞";
    if (name === "usd") return Number(value).toFixed(4);
    if (name === "seconds") return Math.round(value).toString();
    return Math.trunc(value).toLocaleString("en-US");
  }
  function setMeter(el, name, used, limit) {
    var percent = 0, level = "none";
    if (limit !== null && limit !== undefined) {
      percent = limit ? Math.min(100, Math.round((100 * used) / limit)) : 100;
      level = percent >= 100 ? "bad" : percent >= 80 ? "warn" : "ok";
    }
    el.classList.remove("level-ok", "level-warn", "level-bad", "level-none");
    el.classList.add("level-" + level);
    var bar = el.tagName === "PROGRESS" ? el : el.querySelector("progress");
    if (bar) bar.value = percent;
    var value = el.querySelector(".meter-value");
    var text = fmt(name, used) + " / " + fmt(name, limit);
    if (value) value.textContent = text;
    el.dataset.used = used;
    el.dataset.limit = limit === null || limit === undefined ? "" : limit;
    if (el.classList.contains("minibar")) el.title = name.replace("_", " ") + ": " + text;
  }
  function updateMeters(container, payload) {
    Object.keys(BUDGETS).forEach(function (name) {
      var el = container.querySelector('[data-meter="' + name + '"]');
      if (el) setMeter(el, name, payload.usage[name], payload.budgets[BUDGETS[name]]);
    });
  }
  function statusLabel(status) {
    return { running: "Running", waiting_approval: "Waiting for approval", succeeded: "Succeeded",
             failed: "Failed", stopped: "Stopped" }[status] || status;
  }

  // The runs list's cost cell, as the server's `dollars` filter writes it.
  function dollars(value) {
    var amount = Number(value) || 0;
    if (amount === 0) return "$0";
    if (Math.abs(amount) < 1) return "$" + amount.toFixed(4);
    return "$" + amount.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  }

  function onRunUpdated(payload) {
    var id = String(payload.id);
    document.querySelectorAll('[data-run-meters="' + id + '"]').forEach(function (el) {
      updateMeters(el, payload);
      if (payload.status !== "running" && payload.status !== "waiting_approval") {
        el.removeAttribute("data-active");
      }
    });
    var row = document.getElementById("run-" + id);
    if (row) {
      var status = row.querySelector('[data-field="status"]');
      if (status) {
        status.textContent = statusLabel(payload.status);
        status.className = "status status-" + payload.status;
      }
      var reason = row.querySelector('[data-field="stop_reason"]');
      if (reason) reason.textContent = payload.stop_reason || "";
      var usd = row.querySelector('[data-field="usd"]');
      if (usd && payload.usage) usd.textContent = dollars(payload.usage.usd);
      updateMeters(row, payload);
    } else {
      var table = document.querySelector("[data-live-runs][data-first-page]");
      if (table) refresh(table);
    }
    var header = document.getElementById("run-header");
    if (header && header.dataset.runId === id && header.dataset.liveStatus !== payload.status) {
      refresh(header);
    }
    var tail = document.getElementById("timeline-tail");
    if (tail && document.getElementById("timeline").dataset.runId === id) refresh(tail);
  }

  function onKillSwitch(payload) {
    var banner = document.getElementById("killswitch-banner");
    if (!banner) return;
    ["mode", "reason", "set_by"].forEach(function (field) {
      var el = banner.querySelector('[data-field="' + field + '"]');
      if (el) el.textContent = payload[field] || "";
    });
    banner.hidden = payload.mode === "off";
  }

  function ids(payload) {
    return payload.ids || (payload.id !== undefined ? [payload.id] : []);
  }
  function updateQueueCount() {
    var queue = document.getElementById("approval-queue");
    var count = document.getElementById("pending-count");
    if (!queue) return;
    var open = queue.querySelectorAll(".approval:not(.gone)").length;
    if (count) count.textContent = open;
    var empty = document.getElementById("queue-empty");
    if (empty) empty.hidden = open > 0;
  }
  function onApprovalsRemoved(payload) {
    ids(payload).forEach(function (id) {
      var card = document.getElementById("approval-" + id);
      if (!card) return;
      if (card.classList.contains("settled")) {
        setTimeout(function () { card.remove(); updateQueueCount(); }, 5000);
        return;
      }
      card.classList.add("gone");
      card.querySelectorAll("form").forEach(function (f) { f.remove(); });
      var note = document.createElement("p");
      note.className = "note";
      note.setAttribute("role", "status");
      note.textContent = payload.status
        ? "Decided elsewhere (" + payload.status + ")."
        : "Closed: its run ended.";
      card.appendChild(note);
      setTimeout(function () { card.remove(); updateQueueCount(); }, 3000);
    });
    updateQueueCount();
  }
  function onApprovalsAdded() {
    var queue = document.getElementById("approval-queue");
    if (!queue || !window.htmx) return;
    var newest = 0;
    queue.querySelectorAll("[data-approval-id]").forEach(function (card) {
      newest = Math.max(newest, Number(card.dataset.approvalId));
    });
    var url = queue.dataset.url + "?newer_than=" + newest;
    if (!queue.dataset.fetching) {
      queue.dataset.fetching = "1";
      htmx.ajax("GET", url, { target: queue, swap: "beforeend" }).then(function () {
        delete queue.dataset.fetching;
        updateQueueCount();
      }, function () { delete queue.dataset.fetching; });
    }
  }
  function onApprovalsChanged(payload) {
    ids(payload).forEach(function (id) {
      var progress = document.getElementById("approval-" + id + "-progress");
      if (progress) refresh(progress);
    });
  }

  // A policy page stays as it is (an editor's draft is kept) and says what is now in force.
  function onPolicyChanged(payload) {
    var notice = document.getElementById("policy-changed");
    if (!notice) return;
    notice.textContent = "Policy v" + payload.version + " was just published by " +
      payload.author + (payload.reason ? " (" + payload.reason + ")" : "") +
      "; this page shows what was in force when it loaded. ";
    var link = document.createElement("a");
    link.href = "/policy/";
    link.textContent = "See the current policy";
    notice.appendChild(link);
    notice.hidden = false;
  }

  function dispatch(message) {
    var event = message.event, payload = message.payload || {};
    if (event === "run.updated") onRunUpdated(payload);
    else if (event === "killswitch.changed") onKillSwitch(payload);
    else if (event === "approvals.removed") onApprovalsRemoved(payload);
    else if (event === "approvals.added") onApprovalsAdded(payload);
    else if (event === "approvals.changed") onApprovalsChanged(payload);
    else if (event === "policy.changed") onPolicyChanged(payload);
    if (event !== "hello" && event !== "pong") refreshListeners(event);
    body.dispatchEvent(new CustomEvent("live:" + event, { detail: payload }));
  }

  // After a reconnect events may have been missed: refresh what can be refreshed (the paused-agents
  // and degraded-tools banners included: #console-banners re-fetches /status/banners/).
  function resync() {
    document.querySelectorAll("[data-live-refresh], [data-live-runs][data-first-page]").forEach(refresh);
    onApprovalsAdded();
  }

  // --- the socket -------------------------------------------------------------------------
  var notice = document.getElementById("live-status");
  var attempts = 0, socket = null, everConnected = false, pingTimer = null;

  function connect() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var url = scheme + location.host + body.dataset.liveUrl +
      "?topics=" + encodeURIComponent(body.dataset.liveTopics || "killswitch");
    socket = new WebSocket(url);
    socket.onopen = function () {
      attempts = 0;
      if (notice) notice.hidden = true;
      body.dataset.live = "connected";
      if (everConnected) resync();
      if (everConnected) checkHealth();
      everConnected = true;
      clearInterval(pingTimer);
      pingTimer = setInterval(function () {
        if (socket.readyState === WebSocket.OPEN) socket.send('{"type":"ping"}');
      }, 25000);
    };
    socket.onmessage = function (message) {
      try { dispatch(JSON.parse(message.data)); } catch (error) { console.error(error); }
    };
    socket.onclose = function (event) {
      clearInterval(pingTimer);
      body.dataset.live = "disconnected";
      if (notice) {
        notice.textContent = event.code === 4403
          ? "Live updates refused (your session or role changed) — retrying; reload to log in again."
          : "Live updates disconnected — reconnecting…";
        notice.hidden = false;
      }
      attempts += 1;
      var delay = Math.min(MAX_BACKOFF_MS, 500 * Math.pow(2, attempts - 1));
      setTimeout(connect, delay / 2 + Math.random() * delay / 2);
    };
  }

  // --- clocks: time left on approvals, seconds used by active runs ---------------------------
  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-expires-at]").forEach(function (el) {
      var left = Math.max(0, Math.round((Date.parse(el.dataset.expiresAt) - now) / 1000));
      var m = Math.floor(left / 60), s = left % 60;
      el.textContent = left <= 0 ? "expired" : (m ? m + "m " + String(s).padStart(2, "0") + "s" : s + "s") + " left";
      el.classList.toggle("bad", left < 60);
    });
    document.querySelectorAll("[data-run-meters][data-active]").forEach(function (el) {
      var meter = el.querySelector('[data-meter="seconds"]');
      if (!meter) return;
      var seconds = (now - Date.parse(el.dataset.startedAt)) / 1000;
      var limit = meter.dataset.limit === "" ? null : Number(meter.dataset.limit);
      setMeter(meter, "seconds", Math.max(0, seconds), limit);
    });
  }

  // --- health: background sweeps and the channel layer (GET /status/, never part of a render) --
  var health = document.getElementById("health-status");
  var HEALTH_EVERY_MS = 15000;
  function ago(seconds) {
    if (seconds < 90) return Math.round(seconds) + "s ago";
    if (seconds < 5400) return Math.round(seconds / 60) + "m ago";
    return Math.round(seconds / 3600) + "h ago";
  }
  function showHealth(status) {
    var lines = [];
    var background = status.background || {};
    if (background.ok === false) {
      var behind = (background.stale || []).map(function (name) {
        var label = (background.labels || {})[name] || name;
        var since = (background.seconds_since || {})[name];
        return since === undefined ? label + " has not run yet" : label + " last ran " + ago(since);
      });
      lines.push("Background work is behind: " + behind.join(", ") +
        " — check the Celery worker, beat and Redis.");
    }
    if (status.live && status.live.ok === false) {
      lines.push("Live updates degraded: the channel layer (Redis) is unreachable.");
    }
    health.textContent = lines.join(" ");
    health.hidden = lines.length === 0;
  }
  function checkHealth() {
    if (!health || !health.dataset.url || !window.fetch || document.hidden) return;
    fetch(health.dataset.url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        var json = (response.headers.get("Content-Type") || "").indexOf("application/json") === 0;
        return response.ok && json ? response.json() : null;
      })
      .then(function (status) {
        if (!status) return;
        showHealth(status);
        // Also after a reconnect: a kill-switch change missed meanwhile shows up here.
        if (status.kill_switch) onKillSwitch(status.kill_switch);
      })
      .catch(function () { /* the server itself is unreachable: #live-status already says so */ });
  }

  connect();
  setInterval(tick, 1000);
  checkHealth();
  setInterval(checkHealth, HEALTH_EVERY_MS);
})();
