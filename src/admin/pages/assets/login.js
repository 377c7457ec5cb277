// The login page: a one-time link carries its ticket in the URL's fragment, which the
// browser never sends to a server; it is taken out of the address bar and posted in a
// form body. A page that answered 401 (/status, /selftest) comes back to itself.
"use strict";
(function () {
  const path = location.pathname;
  const next = path === "/status" || path === "/selftest" ? path : null;
  if (next) document.getElementById("next").value = next;
  const hash = new URLSearchParams(location.hash.replace(/^#/, ""));
  const ticket = hash.get("ticket");
  if (ticket) {
    history.replaceState(null, "", location.pathname);
    document.getElementById("ticket").value = ticket;
    const n = hash.get("next");
    if (n === "/status" || n === "/selftest") document.getElementById("ticket-next").value = n;
    document.getElementById("ticket-form").submit();
    return;
  }
  if (path === "/login" && performance.getEntriesByType) {
    const nav = performance.getEntriesByType("navigation")[0];
    if (nav && nav.responseStatus === 401) {
      document.getElementById("message").textContent =
        "Refused: wrong token, or a one-time link that was used already or has expired.";
    }
  }
})();
