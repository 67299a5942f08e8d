// tollhouse console: the only script besides htmx. No inline handlers anywhere (CSP forbids them).
"use strict";
document.addEventListener("submit", function (event) {
  // Destructive buttons carry data-confirm; ask before the form goes out.
  var button = event.submitter;
  var message = button && button.getAttribute("data-confirm");
  if (message && !window.confirm(message)) {
    event.preventDefault();
  }
}, true);
