// Live updates: the server sends an event when requests, grants or sessions change; the page re-reads
// its own address (path and query: a filtered list stays filtered, and an action's notice, which the
// address names, stays shown) and swaps <main>, unless the approver is typing in a form or has changed
// one (a service unticked, a shorter time typed: a refresh would put back what the server wrote, and
// the approval would grant what they took out); then it waits for the next event. These requests are marked X-Chaperone-Background: they do not count as activity,
// so a forgotten tab is still signed out after the idle time-out; it then goes to the sign-in page.
"use strict";
(function () {
  if (!document.body || document.body.dataset.live !== "1" || !window.EventSource) return;
  // A change that arrives while a refresh is on its way is read by one more refresh after it.
  var busy = false, again = false;
  function signedOut() { location.assign("/login"); }
  // Whether a field in <main> differs from what the page was sent with.
  function touched() {
    var main = document.getElementById("main");
    if (!main) return false;
    var fields = main.querySelectorAll("input, textarea, select");
    for (var i = 0; i < fields.length; i++) {
      var f = fields[i];
      if (f.tagName === "SELECT") {
        // A select none of whose options the page marked shows its first: that is its default.
        var initial = 0;
        for (var j = 0; j < f.options.length; j++) {
          if (f.options[j].defaultSelected) { initial = j; break; }
        }
        if (f.selectedIndex !== initial) return true;
      } else if (f.type === "checkbox" || f.type === "radio") {
        if (f.checked !== f.defaultChecked) return true;
      } else if (f.type !== "hidden" && f.value !== f.defaultValue) {
        return true;
      }
    }
    return false;
  }
  function refresh() {
    var active = document.activeElement;
    if (busy) { again = true; return; }
    if ((active && active.form && active.value) || touched()) return;
    busy = true;
    again = false;
    fetch(location.pathname + location.search, {
      credentials: "same-origin",
      headers: { "Accept": "text/html", "X-Chaperone-Background": "1" }
    })
      .then(function (r) {
        if (r.status === 401) { signedOut(); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("main");
        var main = document.getElementById("main");
        if (fresh && main) {
          main.replaceWith(document.adoptNode(fresh));
          document.dispatchEvent(new Event("chaperone:refreshed"));
        }
      })
      .finally(function () {
        busy = false;
        if (again) refresh();
      });
  }
  var source = new EventSource("/events");
  source.addEventListener("change", refresh);
  // The stream ends when the session does; the browser's reconnect then gets a 401 and gives up.
  source.addEventListener("error", function () {
    if (source.readyState === EventSource.CLOSED) signedOut();
  });
})();

// Countdowns (time left on a grant, until a request lapses): the server writes the seconds left into
// data-left when it makes the page; this keeps them going, counted from when the page (or its refresh)
// arrived, so the browser's clock does not matter.
(function () {
  function span(s) {
    s = Math.max(0, Math.floor(s));
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    if (d) return h ? d + "d " + h + "h" : d + "d";
    if (h) return m ? h + "h " + m + "m" : h + "h";
    if (m) return m + "m";
    return s + "s";
  }
  var since = Date.now();
  document.addEventListener("chaperone:refreshed", function () { since = Date.now(); });
  function tick() {
    var gone = (Date.now() - since) / 1000;
    document.querySelectorAll(".left[data-left]").forEach(function (el) {
      var left = Number(el.dataset.left) - gone;
      el.textContent = left > 0 ? span(left) : "ended";
    });
  }
  if (document.querySelector(".left[data-left]") || (document.body && document.body.dataset.live === "1")) {
    setInterval(tick, 1000);
  }
})();

// Passkeys: the buttons marked data-passkey="signin" or "enroll" run a WebAuthn ceremony with the server
// (start: options + ceremony id; finish: the browser's answer). Base64url <-> bytes by hand, so this works
// in browsers without PublicKeyCredential.parse*FromJSON.
(function () {
  var buttons = document.querySelectorAll("button[data-passkey]");
  if (!buttons.length) return;
  function b64uToBytes(s) {
    s = s.replace(/-/g, "+").replace(/_/g, "/");
    while (s.length % 4) s += "=";
    var bin = atob(s), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  }
  function bytesToB64u(buf) {
    var bytes = new Uint8Array(buf), bin = "";
    for (var i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function creationOptions(o) {
    var pk = Object.assign({}, o.publicKey);
    pk.challenge = b64uToBytes(pk.challenge);
    pk.user = Object.assign({}, pk.user, { id: b64uToBytes(pk.user.id) });
    pk.excludeCredentials = (pk.excludeCredentials || []).map(function (c) {
      return Object.assign({}, c, { id: b64uToBytes(c.id) });
    });
    return { publicKey: pk };
  }
  function requestOptions(o) {
    var pk = Object.assign({}, o.publicKey);
    pk.challenge = b64uToBytes(pk.challenge);
    pk.allowCredentials = (pk.allowCredentials || []).map(function (c) {
      return Object.assign({}, c, { id: b64uToBytes(c.id) });
    });
    return { publicKey: pk, mediation: o.mediation };
  }
  function registration(c) {
    return {
      id: c.id, rawId: bytesToB64u(c.rawId), type: c.type, extensions: c.getClientExtensionResults(),
      response: {
        attestationObject: bytesToB64u(c.response.attestationObject),
        clientDataJSON: bytesToB64u(c.response.clientDataJSON),
        transports: c.response.getTransports ? c.response.getTransports() : []
      }
    };
  }
  function assertion(c) {
    return {
      id: c.id, rawId: bytesToB64u(c.rawId), type: c.type, extensions: c.getClientExtensionResults(),
      response: {
        authenticatorData: bytesToB64u(c.response.authenticatorData),
        clientDataJSON: bytesToB64u(c.response.clientDataJSON),
        signature: bytesToB64u(c.response.signature),
        userHandle: c.response.userHandle ? bytesToB64u(c.response.userHandle) : null
      }
    };
  }
  function post(url, body, csrf) {
    var headers = { "Content-Type": "application/json", "Accept": "application/json" };
    if (csrf) headers["X-CSRF-Token"] = csrf;
    return fetch(url, {
      method: "POST", credentials: "same-origin", headers: headers,
      body: JSON.stringify(body)
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) {
        if (!r.ok) throw new Error(j.error || ("the server answered " + r.status));
        return j;
      });
    });
  }
  function value(id) { var el = document.getElementById(id); return el ? el.value : ""; }
  var status = document.getElementById("passkey-status");
  function say(text) { if (status) status.textContent = text; }
  function fail(e) {
    var msg = e && e.name === "NotAllowedError" ? "The passkey step was cancelled or timed out." : (e && e.message) || String(e);
    say(msg);
    if (status) status.className = "status error";
  }
  buttons.forEach(function (button) {
    button.addEventListener("click", function () {
      if (!window.PublicKeyCredential) { fail(new Error("This browser does not support passkeys.")); return; }
      button.disabled = true;
      if (status) status.className = "status";
      say("Waiting for your passkey…");
      var done;
      if (button.dataset.passkey === "signin") {
        done = post("/login/passkey/start", { name: value("name") })
          .then(function (start) {
            return navigator.credentials.get(requestOptions(start.options)).then(function (cred) {
              return post("/login/passkey/finish", {
                ceremony: start.ceremony, password: value("password"), credential: assertion(cred)
              });
            });
          });
      } else if (button.dataset.passkey === "add") {
        var csrf = button.dataset.csrf;
        done = post("/account/passkeys/start", {}, csrf)
          .then(function (start) {
            return navigator.credentials.create(creationOptions(start.options)).then(function (cred) {
              return post("/account/passkeys/finish", {
                ceremony: start.ceremony, password: value("password"), credential: registration(cred)
              }, csrf);
            });
          });
      } else if (button.dataset.passkey === "vendor") {
        // A vendor's link: one ceremony, whose kind the server says; the answer goes back to ssh.
        var link = "/v/" + encodeURIComponent(button.dataset.token) + "/";
        done = post(link + "start", {})
          .then(function (start) {
            var asked = start.mode === "register"
              ? navigator.credentials.create(creationOptions(start.options)).then(registration)
              : navigator.credentials.get(requestOptions(start.options)).then(assertion);
            return asked.then(function (credential) {
              return post(link + "finish", { ceremony: start.ceremony, credential: credential });
            });
          });
      } else {
        var token = document.getElementById("enroll").dataset.token;
        var base = "/enroll/" + encodeURIComponent(token) + "/passkey/";
        done = post(base + "start", {})
          .then(function (start) {
            return navigator.credentials.create(creationOptions(start.options)).then(function (cred) {
              return post(base + "finish", {
                ceremony: start.ceremony, password: value("password"), password2: value("password2"),
                credential: registration(cred)
              });
            });
          });
      }
      done.then(function (answer) {
        if (answer.message) {
          // Nothing more to do here: the terminal carries on.
          say(answer.message);
          button.hidden = true;
          return;
        }
        say("Done.");
        location.assign(answer.next || "/");
      }).catch(fail).finally(function () { button.disabled = false; });
    });
  });
})();
