// Progressive enhancement for the approval inbox: local times, countdowns and live updates.
// Every page works without this file; it only makes the pages current without reloading.
"use strict";

(function () {
  const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
  const timeFormat = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });

  function sameDay(a, b) {
    return a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() && a.getDate() === b.getDate();
  }

  // Server-rendered times are UTC ISO strings; show them in the viewer's own zone.
  function formatTimes(root) {
    const now = new Date();
    root.querySelectorAll("time[datetime]").forEach(function (element) {
      const moment = new Date(element.dateTime);
      if (Number.isNaN(moment.getTime())) {
        return;
      }
      element.textContent = sameDay(moment, now) ? timeFormat.format(moment) : fullFormat.format(moment);
      element.title = fullFormat.format(moment) + " (" + Intl.DateTimeFormat().resolvedOptions().timeZone + ")";
    });
  }

  function duration(milliseconds) {
    const seconds = Math.max(0, Math.floor(milliseconds / 1000));
    const days = Math.floor(seconds / 86400);
    const hours = Math.floor((seconds % 86400) / 3600);
    const minutes = Math.floor((seconds % 3600) / 60);
    const rest = seconds % 60;
    if (days > 0) {
      return days + "d " + hours + "h";
    }
    if (hours > 0) {
      return hours + "h " + String(minutes).padStart(2, "0") + "m";
    }
    if (minutes > 0) {
      return minutes + "m " + String(rest).padStart(2, "0") + "s";
    }
    return rest + "s";
  }

  function tick() {
    const now = Date.now();
    document.querySelectorAll("[data-expires]").forEach(function (element) {
      const left = Date.parse(element.dataset.expires) - now;
      element.textContent = left > 0 ? duration(left) : "expired";
      element.classList.toggle("urgent", left < 60000);
    });
    document.querySelectorAll("[data-since]").forEach(function (element) {
      element.textContent = duration(now - Date.parse(element.dataset.since));
    });
  }

  // -- live updates ---------------------------------------------------------------------------

  const body = document.body;
  const fragmentUrl = body.dataset.live;
  const targetId = body.dataset.liveTarget;
  const onlyApproval = body.dataset.approvalId;
  const state = document.querySelector("[data-live-state]");

  function showState(text, tone) {
    document.documentElement.dataset.stream = tone;
    if (state) {
      state.hidden = false;
      state.textContent = text;
      state.className = "live-state " + tone;
    }
  }

  let refreshing = false;
  let again = false;
  let afterRefresh = [];

  // Re-reads the server-rendered fragment instead of patching rows by hand: the server decides
  // what this viewer may see and do, and escapes it; the browser only swaps it in.
  function refresh(then) {
    if (then) {
      afterRefresh.push(then);
    }
    if (refreshing) {
      again = true;
      return;
    }
    refreshing = true;
    fetch(fragmentUrl, { credentials: "same-origin", headers: { Accept: "text/html" }, cache: "no-store" })
      .then(function (response) {
        if (response.status === 401) {
          window.location.reload();
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html !== null) {
          swap(html);
        }
      })
      .catch(function () {})
      .finally(function () {
        refreshing = false;
        if (again) {
          again = false;
          refresh();
          return;
        }
        const done = afterRefresh;
        afterRefresh = [];
        done.forEach(function (callback) {
          callback();
        });
      });
  }

  function swap(html) {
    const current = document.getElementById(targetId);
    const fresh = new DOMParser().parseFromString(html, "text/html").getElementById(targetId);
    if (!current || !fresh) {
      return;
    }
    const known = new Set(Array.from(current.querySelectorAll("[data-approval-id]"), function (row) {
      return row.dataset.approvalId;
    }));
    fresh.querySelectorAll("tr[data-approval-id]").forEach(function (row) {
      if (!known.has(row.dataset.approvalId)) {
        row.classList.add("arrived");
      }
    });
    // Keep a half-typed reason if the form survives the update: the very element moves over,
    // so typing that lands while the update is swapped in is not lost either.
    const typed = current.querySelector("textarea[name=reason]");
    const kept = fresh.querySelector("textarea[name=reason]");
    const typing = typed !== null && document.activeElement === typed;
    const selection = typing ? [typed.selectionStart, typed.selectionEnd] : null;
    if (typed && kept) {
      kept.replaceWith(typed);
    }
    current.replaceWith(fresh);
    if (typing && selection && fresh.contains(typed)) {
      typed.focus();
      typed.setSelectionRange(selection[0], selection[1]);
    }
    formatTimes(fresh);
    tick();
    const count = fresh.dataset.count;
    if (count !== undefined) {
      document.querySelectorAll("[data-pending-count]").forEach(function (element) {
        element.textContent = count;
        element.toggleAttribute("data-zero", count === "0");
      });
      document.title = document.title.replace(/\(\d+\)/, "(" + count + ")");
    }
  }

  function listen() {
    if (!fragmentUrl || !targetId || typeof EventSource === "undefined") {
      return;
    }
    const source = new EventSource("/events");
    source.addEventListener("open", function () {
      // Whatever changed between rendering the page (or losing the stream) and now is in a fresh
      // fragment; the page says it is live once that is shown.
      refresh(function () {
        showState("live", "open");
      });
    });
    source.addEventListener("approval", function (message) {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (error) {
        return;
      }
      if (!onlyApproval || event.id === onlyApproval) {
        refresh();
      }
    });
    source.addEventListener("error", function () {
      if (source.readyState === EventSource.CLOSED) {
        showState("offline: reload to update", "closed");
      } else {
        showState("reconnecting…", "connecting");
      }
    });
  }

  formatTimes(document);
  tick();
  window.setInterval(tick, 1000);
  listen();
})();
