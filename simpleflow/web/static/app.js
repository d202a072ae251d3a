// simpleflow dashboard: live refresh of the runs table and the overview. No libraries.
"use strict";
(function () {
  var live = document.getElementById("runs-live");
  var toggle = document.getElementById("live");
  if (live && live.dataset.src) {
    var every = parseInt(live.dataset.interval, 10) || 5000;
    setInterval(function () {
      if (toggle && !toggle.checked) { return; }
      fetch(live.dataset.src, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) {
          var digest = r.headers.get("X-Digest");
          // unchanged (or logged out: no digest): keep the table, so nothing moves under the pointer
          if (!r.ok || !digest || digest === live.dataset.digest) { return null; }
          live.dataset.digest = digest;
          return r.text();
        })
        .then(function (html) {
          // the fragment is rendered and escaped on the server
          if (html !== null) { live.innerHTML = html; }
        })
        .catch(function () { /* keep the last table; try again next time */ });
    }, every);
  }
  var reload = document.querySelector("[data-reload]");
  if (reload) {
    setTimeout(function () { window.location.reload(); }, parseInt(reload.dataset.reload, 10) || 15000);
  }
})();
