// Live updates for the console. Pages work without this script: it only follows the server-sent
// event stream and brings changes onto the page as they are committed.
(function () {
  "use strict";
  if (!window.EventSource) return;

  function text(el, value) { if (el) el.textContent = String(value); }

  function updateCounts(data) {
    var badge = document.getElementById("awaiting-count");
    if (badge) {
      text(badge, data.awaiting);
      badge.classList.toggle("waiting", data.awaiting > 0);
    }
    var tabs = document.querySelector("nav.tabs[data-kind]");
    if (tabs && data.counts) {
      var byState = data.counts[tabs.getAttribute("data-kind")] || {};
      var all = 0;
      Object.keys(byState).forEach(function (s) {
        all += byState[s];
        text(tabs.querySelector('[data-count="' + s + '"]'), byState[s]);
      });
      text(tabs.querySelector('[data-count="all"]'), all);
    }
  }

  // Pipeline: replace a changed row, or fetch the row of a new task (the server says whether it
  // belongs in this view).
  function pipeline(data) {
    var body = document.querySelector('tbody[data-live="pipeline"]');
    if (!body) return;
    var existing = body.querySelector('tr[data-id="' + data.taskId + '"]');
    if (!existing && body.getAttribute("data-first") !== "1") return;
    var query = body.getAttribute("data-query") || "";
    fetch("/console/pipeline/row/" + encodeURIComponent(data.taskId) + "?" + query, { credentials: "same-origin" })
      .then(function (r) { return r.status === 200 ? r.text() : (r.status === 204 ? "" : null); })
      .then(function (html) {
        if (html === null) return;
        var current = body.querySelector('tr[data-id="' + data.taskId + '"]');
        if (html === "") { if (current) current.remove(); return; }
        var tmp = document.createElement("tbody");
        tmp.innerHTML = html.trim();
        var row = tmp.firstElementChild;
        if (!row) return;
        row.classList.add("fresh");
        if (current) { current.replaceWith(row); } else { body.insertBefore(row, body.firstChild); }
        var empty = document.querySelector(".table-wrap .empty");
        if (empty) empty.remove();
      })
      .catch(function () {});
  }

  // Approvals: say on a card that someone decided it elsewhere; announce new waiting tasks.
  function approvals(data) {
    var list = document.querySelector('[data-live="approvals"]');
    if (!list) return;
    var card = list.querySelector('article[data-id="' + data.taskId + '"]');
    if (card && data.to !== "awaiting_approval") {
      var note = card.querySelector(".live-note");
      if (note) {
        note.hidden = false;
        text(note, "Decided elsewhere: now " + data.to.replace(/_/g, " ") + " (" + data.action + " by " + data.actor + ").");
      }
      card.classList.add("decided");
    } else if (!card && data.to === "awaiting_approval") {
      var banner = document.getElementById("new-approvals");
      if (banner) banner.hidden = false;
    }
  }

  // Task page: say that the task changed since the page was drawn.
  function task(data) {
    var head = document.querySelector("[data-task]");
    if (!head || head.getAttribute("data-task") !== data.taskId) return;
    var banner = document.getElementById("task-changed");
    if (!banner) return;
    banner.hidden = false;
    banner.textContent = "This task is now " + data.to.replace(/_/g, " ") + " (" + data.action + " by " + data.actor + "). ";
    var link = document.createElement("a");
    link.href = window.location.pathname;
    link.textContent = "Reload";
    banner.appendChild(link);
  }

  // What the page may have missed: the first page of the Pipeline reloads; elsewhere the next
  // event and the counts sent on connecting bring the page along.
  function resync() {
    if (document.querySelector('tbody[data-live="pipeline"][data-first="1"]')) window.location.reload();
  }

  function onTask(e) {
    var data;
    try { data = JSON.parse(e.data); } catch (err) { return; }
    updateCounts(data);
    pipeline(data);
    approvals(data);
    task(data);
  }

  function onCounts(e) {
    var data;
    try { data = JSON.parse(e.data); } catch (err) { return; }
    updateCounts(data);
  }

  // One stream while the page is on screen. Over HTTP/1.1 a browser opens at most six
  // connections to one host and each open stream holds one, so streams kept by pages nobody looks
  // at (a page in the back/forward cache, a tab left in the background) would hold back the next
  // page's requests. Such a page closes its stream: at once when it is put away, after a minute
  // when its tab is hidden. Back on screen it connects again, as after a resync.
  var source = null;
  var hiddenTimer = null;
  var dot = document.getElementById("live");

  function connect(afterPause) {
    if (source) return;
    source = new EventSource("/console/events");
    source.addEventListener("open", function () { if (dot) dot.classList.add("on"); });
    source.addEventListener("error", function () { if (dot) dot.classList.remove("on"); });
    source.addEventListener("counts", onCounts);
    source.addEventListener("task", onTask);
    source.addEventListener("resync", resync);
    if (afterPause) resync();
  }

  function disconnect() {
    if (!source) return;
    source.close();
    source = null;
    if (dot) dot.classList.remove("on");
  }

  window.addEventListener("pagehide", disconnect);
  window.addEventListener("pageshow", function (e) { if (e.persisted) connect(true); });
  document.addEventListener("visibilitychange", function () {
    if (hiddenTimer !== null) { window.clearTimeout(hiddenTimer); hiddenTimer = null; }
    if (document.visibilityState === "hidden") {
      hiddenTimer = window.setTimeout(function () { hiddenTimer = null; disconnect(); }, 60000);
    } else if (!source) {
      connect(true);
    }
  });
  connect(false);
})();
