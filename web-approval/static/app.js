// Live updates: the server sends an event when requests, grants or sessions change; the page re-reads
// itself and swaps <main>, unless the approver is typing in a form (then it waits for the next event).
"use strict";
(function () {
  if (!document.body || document.body.dataset.live !== "1" || !window.EventSource) return;
  var busy = false;
  function refresh() {
    var active = document.activeElement;
    if (busy || (active && active.form && active.value)) return;
    busy = true;
    fetch(location.pathname, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("main");
        var main = document.getElementById("main");
        if (fresh && main) main.replaceWith(document.adoptNode(fresh));
      })
      .finally(function () { busy = false; });
  }
  var source = new EventSource("/events");
  source.addEventListener("change", refresh);
})();
