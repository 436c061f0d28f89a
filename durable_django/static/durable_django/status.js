/* Live status of durable instances over a websocket (durable_django.consumers).
 *
 * Markup: <div data-durable-status data-ws-path="/ws/durable/instances/ID/"> with descendants
 * [data-field="status"], [data-field="waiting_for"], ... that receive the matching JSON fields.
 * The element gets data-status="<status>" and data-version="<n>" so CSS and tests can follow it, and
 * data-tone="<tone>" when the message has a "tone" (a project's consumer adds it: "positive", "negative",
 * "neutral" colour the outcome, which the process status alone cannot tell: a completed process may have said no).
 * A <progress data-progress> descendant follows the "percent" of the status the process reports
 * (durable.set_status({"percent": 80, ...}): the message's "progress"); [data-field="progress_text"] shows it as text.
 * Reconnects with backoff; each connection starts with a fresh snapshot from the server.
 * Elements marked data-durable-refresh (with an id) are re-fetched from the current URL when the
 * instance's version changes (a history table, a timeline), so they follow without a page reload.
 */
(function () {
  "use strict";
  function connect(el, delay) {
    var proto = window.location.protocol === "https:" ? "wss://" : "ws://";
    var ws = new WebSocket(proto + window.location.host + el.getAttribute("data-ws-path"));
    el.setAttribute("data-connection", "connecting");
    ws.onopen = function () { el.setAttribute("data-connection", "open"); delay = 500; };
    ws.onmessage = function (msg) {
      var data = JSON.parse(msg.data);
      if (data.type === "gone") { el.setAttribute("data-status", "gone"); return; }
      if (data.type !== "status" || !data.instance) { return; }
      var inst = data.instance;
      el.setAttribute("data-status", inst.status);
      el.setAttribute("data-version", inst.version);
      if (inst.tone !== undefined) { el.setAttribute("data-tone", inst.tone || ""); }
      el.querySelectorAll("[data-field]").forEach(function (node) {
        var value = inst[node.getAttribute("data-field")];
        node.textContent = (value === null || value === undefined || value === "") ? "-" : String(value);
      });
      el.querySelectorAll("progress[data-progress]").forEach(function (bar) {
        var p = inst.progress;
        if (p && typeof p.percent === "number") { bar.value = p.percent; }
      });
      if (el.getAttribute("data-rendered-version") !== String(inst.version)) {
        el.setAttribute("data-rendered-version", inst.version);
        refresh();
      }
      el.dispatchEvent(new CustomEvent("durable:status", {detail: inst, bubbles: true}));
    };
    ws.onclose = function (ev) {
      el.setAttribute("data-connection", ev.code === 4403 ? "refused" : "closed");
      if (ev.code === 4403) { return; }  // not allowed: retrying will not help
      setTimeout(function () { connect(el, Math.min(delay * 2, 10000)); }, delay);
    };
  }
  var pending = null;
  function refresh() {
    var parts = document.querySelectorAll("[data-durable-refresh][id]");
    if (!parts.length || pending) { return; }
    pending = setTimeout(function () {
      pending = null;
      fetch(window.location.href, {credentials: "same-origin"}).then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (!html) { return; }
          var doc = new DOMParser().parseFromString(html, "text/html");
          parts.forEach(function (node) {
            var fresh = doc.getElementById(node.id);
            if (fresh) { node.innerHTML = fresh.innerHTML; }
          });
        }).catch(function () {});
    }, 200);
  }
  function start() {
    document.querySelectorAll("[data-durable-status]").forEach(function (el) {
      el.setAttribute("data-rendered-version", el.getAttribute("data-version") || "");  // what the page shows
      connect(el, 500);
    });
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
})();
