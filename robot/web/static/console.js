// The queue page, live: countdowns from the due times the server gives, and the rows
// fetched again every few seconds (checked boxes stay checked). No inline script anywhere.
"use strict";

(function () {
  const REFRESH_MS = 4000;
  let serverOffset = 0; // server clock minus this browser's clock, in milliseconds

  function readClock(root) {
    const clock = root.querySelector("#clock");
    if (clock && clock.dataset.now) {
      serverOffset = Date.parse(clock.dataset.now) - Date.now();
    }
  }

  function format(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const pad = (n) => String(n).padStart(2, "0");
    return h > 0 ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
  }

  function tick() {
    const now = Date.now() + serverOffset;
    for (const el of document.querySelectorAll(".countdown[data-due]")) {
      const left = (Date.parse(el.dataset.due) - now) / 1000;
      el.textContent = left > 0 ? `leaves in ${format(left)}` : "leaving now";
      el.classList.toggle("due", left <= 0);
    }
  }

  async function refresh(live) {
    const checked = new Set(
      Array.from(live.querySelectorAll("input[name=ids]:checked"), (box) => box.value)
    );
    let response;
    try {
      response = await fetch(live.dataset.src, { credentials: "same-origin" });
    } catch (err) {
      return; // the console is restarting: try again at the next turn
    }
    if (!response.ok || response.redirected) {
      return;
    }
    const html = await response.text();
    const fresh = new DOMParser().parseFromString(html, "text/html");
    live.replaceChildren(...fresh.body.childNodes);
    for (const box of live.querySelectorAll("input[name=ids]")) {
      box.checked = checked.has(box.value);
    }
    readClock(live);
    tick();
  }

  function confirmSelection(event) {
    const button = event.submitter;
    if (!button || !button.dataset.selection) {
      return;
    }
    const form = event.target;
    if (!form.querySelector("input[name=ids]:checked")) {
      event.preventDefault();
      window.alert("Tick the rows first.");
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    readClock(document);
    tick();
    window.setInterval(tick, 1000);
    const live = document.querySelector("#live[data-src]");
    if (live) {
      window.setInterval(() => refresh(live), REFRESH_MS);
    }
    const selection = document.querySelector("#selection");
    if (selection) {
      selection.addEventListener("submit", confirmSelection);
    }
  });
})();
