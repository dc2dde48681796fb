// Aiki dashboard: confirmation dialogs, and a refresh of the live parts of a page.
"use strict";

document.addEventListener("click", (event) => {
  const opener = event.target.closest("[data-confirm]");
  if (opener) {
    document.getElementById(opener.dataset.confirm).showModal();
    return;
  }
  const closer = event.target.closest("[data-close]");
  if (closer) closer.closest("dialog").close();
});

// a form sent back with a problem opens again, with what was typed
document.querySelector("dialog[data-open]")?.showModal();

// Every element with `data-refresh="N"` (seconds, 0: never) is fetched anew from the
// same URL, so the filters of the page stay as they are; never while a dialog is open,
// the tab is hidden, or the "Auto-refresh" box is unticked.
const live = [...document.querySelectorAll("[data-refresh]")].filter(
  (el) => Number(el.dataset.refresh) > 0,
);
if (live.length) {
  const every = Math.min(...live.map((el) => Number(el.dataset.refresh))) * 1000;
  const toggle = document.getElementById("autorefresh");
  setInterval(async () => {
    if (document.hidden || document.querySelector("dialog[open]")) return;
    if (toggle && !toggle.checked) return;
    try {
      const response = await fetch(location.href, { credentials: "same-origin" });
      if (!response.ok) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const el of live) {
        const fresh = page.getElementById(el.id);
        if (fresh) el.innerHTML = fresh.innerHTML;
      }
    } catch (_) {
      // the server is away for a moment: the next tick tries again
    }
  }, every);
}
