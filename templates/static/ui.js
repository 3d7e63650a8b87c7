// procession's operator UI: the little that needs a script.  Everything
// works without it except the live refresh.  Served from /static (the
// Content-Security-Policy allows no inline script).
(function () {
  "use strict";
  var main = document.getElementById("main");

  // Run fn every `seconds`, skipping turns while the tab is hidden or the
  // previous turn is still out.
  function every(seconds, fn) {
    var busy = false;
    setInterval(function () {
      if (busy || document.hidden) return;
      busy = true;
      fn().then(function () { busy = false; }, function () { busy = false; });
    }, seconds * 1000);
  }

  function stale(on) {
    if (main) main.classList.toggle("stale", on);
  }

  // The dashboard: numbers and chart shapes from a JSON endpoint, already
  // formatted by the server.
  function apply(data) {
    Object.keys(data.text || {}).forEach(function (key) {
      document.querySelectorAll('[data-live="' + key + '"]').forEach(function (el) {
        el.textContent = data.text[key];
        if (el.classList.contains("bad-if-nonzero")) {
          el.classList.toggle("bad", data.text[key] !== "0");
        }
      });
    });
    Object.keys(data.points || {}).forEach(function (key) {
      document.querySelectorAll('[data-points="' + key + '"]').forEach(function (el) {
        el.setAttribute("points", data.points[key]);
      });
    });
  }

  var liveUrl = main && main.getAttribute("data-live-url");
  if (liveUrl) {
    every(3, function () {
      return fetch(liveUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          if (response.status === 401) { location.reload(); return null; }
          return response.ok ? response.json() : null;
        })
        .then(function (data) {
          stale(!data);
          if (data) apply(data);
        }, function () { stale(true); });
    });
  }

  // Pages that refresh themselves (running, workers): fetch the page again
  // and swap in its main content.
  var refresh = main && Number(main.getAttribute("data-refresh"));
  if (refresh) {
    every(refresh, function () {
      return fetch(location.href, { credentials: "same-origin" })
        .then(function (response) {
          if (response.redirected) { location.reload(); return null; }
          return response.ok ? response.text() : null;
        })
        .then(function (html) {
          stale(html === null);
          if (html === null) return;
          var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("main");
          if (fresh) main.replaceChildren.apply(main, Array.from(fresh.childNodes));
        }, function () { stale(true); });
    });
  }

  // "Select every job on this page".
  document.addEventListener("change", function (event) {
    var box = event.target;
    if (box.matches && box.matches("input[data-select-all]")) {
      box.form.querySelectorAll('input[name="job"]').forEach(function (other) {
        other.checked = box.checked;
      });
    }
  });

  // The login page: a SameSite=Strict cookie is not sent when the page was
  // reached by a link from another site, so ask whether the session is
  // valid after all and go on if it is.
  var login = document.querySelector("[data-session-check]");
  if (login) {
    fetch("/session.json", { credentials: "same-origin" })
      .then(function (response) { return response.json(); })
      .then(function (data) {
        if (data.valid) location.replace(login.getAttribute("data-next") || "/");
      }, function () {});
  }
})();
