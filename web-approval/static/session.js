// A session's page: the recording player (asciinema-player, served by chaperone, its segmented
// recordings so a large recording is loaded a few segments at a time), its markers, the transcript
// search that jumps to a match, and the live view of a running session (server-sent events).
"use strict";
(function () {
  if (!window.AsciinemaPlayer) return;
  var status = document.getElementById("player-status");
  function say(text) { if (status) status.textContent = text; }

  var live = document.getElementById("live");
  if (live) {
    // Asked first: an EventSource cannot read why its stream was refused (too many views open, the
    // session ended or runs on another node), so the player would only ever show "loading".
    fetch(live.dataset.url + "/check", { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) {
        return r.json().then(function (j) {
          if (!r.ok) throw new Error(j.error || ("the server answered " + r.status));
        });
      })
      .then(function () {
        window.chaperoneLive = AsciinemaPlayer.create(
          // No buffering: the point of a live view is to see it now.
          { driver: "eventsource", url: live.dataset.url, bufferTime: 0 }, live,
          { autoPlay: true, fit: "width", controls: false });
      })
      .catch(function (e) {
        var p = document.createElement("p");
        p.className = "error live-refused";
        p.setAttribute("role", "alert");
        p.textContent = "The live view is not shown: " + e.message;
        live.appendChild(p);
      });
  }

  var el = document.getElementById("player");
  if (!el) return;
  var speed = document.getElementById("speed");
  var idle = document.getElementById("idle");
  var markers = document.getElementById("markers");
  var player = null;
  var blobUrl = null;

  function clear(node) { while (node && node.firstChild) node.removeChild(node.firstChild); }
  function clock(t) {
    var s = Math.floor(t), m = Math.floor(s / 60), h = Math.floor(m / 60);
    function two(n) { return (n < 10 ? "0" : "") + n; }
    return (h ? h + ":" + two(m % 60) : m) + ":" + two(s % 60);
  }
  // Seeks and plays from there; at the very end it only seeks (playing an ended recording restarts it).
  function jump(time) {
    if (!player) return;
    player.seek(time).then(function () {
      var end = player.getDuration();
      if (end === undefined || time < end - 0.05) return player.play();
    });
  }

  // The page fetches the index itself (to list the markers), then hands the same index to the player
  // as a blob, so the recording is opened (and audited) once.
  function load(at) {
    var q = idle.value ? "?idle=" + encodeURIComponent(idle.value) : "?idle=";
    say("Loading the recording…");
    fetch(el.dataset.index + q, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) {
        return r.json().then(function (j) {
          if (!r.ok) throw new Error(j.error || ("the server answered " + r.status));
          return j;
        });
      })
      .then(function (index) {
        index.segments.forEach(function (s) { s.url = new URL(s.url, location.href).href; });
        if (player) { player.dispose(); player = null; }
        if (blobUrl) URL.revokeObjectURL(blobUrl);
        blobUrl = URL.createObjectURL(new Blob([JSON.stringify(index)], { type: "application/json" }));
        clear(el);
        player = AsciinemaPlayer.create({ url: blobUrl, format: "segmented" }, el, {
          speed: parseFloat(speed.value) || 1, fit: "width", startAt: at || 0, preload: true
        });
        window.chaperonePlayer = player;
        clear(markers);
        index.markers.forEach(function (m, i) {
          var li = document.createElement("li");
          var b = document.createElement("button");
          b.type = "button";
          // A notice was said by the bastion; a command line's text is what the device showed.
          var kind = (index.marker_kinds || [])[i] || "unattributed";
          b.className = "marker " + kind;
          b.dataset.kind = kind;
          b.title = kind === "notice" ? "said by the bastion" :
            kind === "command" ? "a command line, as the device's screen showed it" :
            "recorded before markers carried their source";
          b.dataset.time = m[0];
          b.textContent = clock(m[0]) + "  " + m[1];
          b.addEventListener("click", function () { jump(m[0]); });
          li.appendChild(b);
          markers.appendChild(li);
        });
        if (!index.markers.length) {
          var li = document.createElement("li");
          li.textContent = "No markers in this recording.";
          markers.appendChild(li);
        }
        // Output that clears or fills the whole screen over and over: the player is given it without the
        // operations the budget refused (the server holds it to the index's budget).
        var notes = [];
        if (index.refused) {
          notes.push("This recording's output asks far more of a terminal than a person's programs do " +
            "(" + index.refused + " screen clears, fills or repeats beyond what its size pays for): the " +
            "player shows it without those.");
        }
        if (index.resizes_delayed) {
          // Also a person's drag of a large window after a long silence: said plainly, not as alarm.
          notes.push("The player paces redraws of the whole terminal: " + index.resizes_delayed +
            " window changes are shown later than they were made, some not at all.");
        }
        if (index.blank_inits) {
          notes.push("Its screens are too large to keep at every seek point: " + index.blank_inits +
            " of them start from a blank screen.");
        }
        if (notes.length) notes.push("`chaperone session play` and the evidence bundle are not affected.");
        say(notes.join(" "));
      })
      .catch(function (e) { say(e.message || String(e)); });
  }
  function reload() { load(player ? player.getCurrentTime() : 0); }
  speed.addEventListener("change", reload);
  idle.addEventListener("change", reload);
  load(0);

  var form = document.getElementById("transcript-search");
  var hits = document.getElementById("hits");
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var text = document.getElementById("ts-text").value;
    clear(hits);
    var url = el.dataset.search + "?text=" + encodeURIComponent(text) + "&idle=" + encodeURIComponent(idle.value);
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) {
        return r.json().then(function (j) {
          if (!r.ok) throw new Error(j.error || ("the server answered " + r.status));
          return j;
        });
      })
      .then(function (found) {
        if (!found.length) {
          var li = document.createElement("li");
          li.textContent = "Not found in this session's recordings.";
          hits.appendChild(li);
          return;
        }
        found.forEach(function (h) {
          var li = document.createElement("li");
          var b = document.createElement("button");
          b.type = "button";
          b.className = "hit";
          b.dataset.time = h.time;
          b.textContent = clock(h.time) + "  " + h.line;
          b.addEventListener("click", function () { jump(h.time); });
          li.appendChild(b);
          hits.appendChild(li);
        });
      })
      .catch(function (e) {
        var li = document.createElement("li");
        li.textContent = e.message || String(e);
        hits.appendChild(li);
      });
  });
})();
