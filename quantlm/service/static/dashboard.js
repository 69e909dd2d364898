// quantlm dashboard: a little plain JavaScript, no build step.
// - forms with data-confirm ask before submitting (the kill switch);
// - pages with <body data-refresh="N"> reload every N seconds unless a form field has focus.
document.addEventListener("submit", function (ev) {
  var msg = ev.target.getAttribute("data-confirm");
  if (msg && !window.confirm(msg)) { ev.preventDefault(); }
});
(function () {
  var secs = parseInt(document.body.getAttribute("data-refresh") || "0", 10);
  if (secs > 0) {
    setInterval(function () {
      var a = document.activeElement;
      if (!a || (a.tagName !== "INPUT" && a.tagName !== "TEXTAREA")) { window.location.reload(); }
    }, secs * 1000);
  }
})();
