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

  // The server's markup of what is shown now: an update that renders the same is not swapped in.
  const liveTarget = targetId ? document.getElementById(targetId) : null;
  let shownMarkup = liveTarget ? liveTarget.outerHTML : null;

  function swap(html) {
    const current = document.getElementById(targetId);
    const fresh = new DOMParser().parseFromString(html, "text/html").getElementById(targetId);
    if (!current || !fresh) {
      return;
    }
    const markup = fresh.outerHTML;
    if (markup === shownMarkup) {
      return;
    }
    shownMarkup = markup;
    const known = new Set(Array.from(current.querySelectorAll("[data-approval-id]"), function (row) {
      return row.dataset.approvalId;
    }));
    fresh.querySelectorAll("tr[data-approval-id]").forEach(function (row) {
      if (!known.has(row.dataset.approvalId)) {
        row.classList.add("arrived");
      }
    });
    const restore = window.brokerPlace.keep(current, fresh);
    current.replaceWith(fresh);
    formatTimes(fresh);
    tick();
    restore();
    const count = fresh.dataset.count;
    if (count !== undefined) {
      document.querySelectorAll("[data-pending-count]").forEach(function (element) {
        element.textContent = count;
        element.toggleAttribute("data-zero", count === "0");
      });
      document.title = document.title.replace(/\([^)]*\)/, "(" + count + ")");
    }
    restoreSelection();
  }

  let listening = false;

  function listen() {
    const refreshes = Boolean(fragmentUrl && targetId);
    if (!("signedIn" in body.dataset) || typeof EventSource === "undefined") {
      return;
    }
    if (listening || (!refreshes && !notifying())) {
      return;
    }
    listening = true;
    const source = new EventSource("/events");
    source.addEventListener("open", function () {
      // Whatever changed between rendering the page (or losing the stream) and now is in a fresh
      // fragment; the page says it is live once that is shown.
      if (!refreshes) {
        showState("live", "open");
        return;
      }
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
      notify(event);
      if (refreshes && (!onlyApproval || event.id === onlyApproval)) {
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

  // -- browser notifications (opt-in) ------------------------------------------------------------

  // Nothing is shown unless this person pressed "Notify me" in this browser and the browser
  // granted permission; the choice is kept per browser, and "Notifications on" turns it off.
  const NOTIFY_KEY = "broker.notify";
  const notifyButton = document.querySelector("[data-notify]");

  function notifying() {
    try {
      return "Notification" in window && Notification.permission === "granted" &&
        window.localStorage.getItem(NOTIFY_KEY) === "on";
    } catch (error) {
      return false;
    }
  }

  function showNotifyButton() {
    if (!notifyButton || !("Notification" in window)) {
      return;
    }
    notifyButton.hidden = false;
    const on = notifying();
    notifyButton.textContent = on ? "Notifications on" : "Notify me";
    notifyButton.setAttribute("aria-pressed", on ? "true" : "false");
    notifyButton.title = on ? "Turn off notifications for new calls in this browser"
      : "Show a notification when a new call waits for a decision";
  }

  function notify(event) {
    if (event.kind !== "opened" || event.status !== "pending" || !notifying()) {
      return;
    }
    try {
      const shown = new Notification("Approval needed: " + event.tool, {
        body: event.agent + " wants to call " + event.tool,
        tag: "approval-" + event.id,
      });
      shown.onclick = function () {
        window.focus();
        window.location.href = "/approvals/" + encodeURIComponent(event.id);
      };
    } catch (error) {
      // Some browsers only notify from a service worker; the inbox still updates.
    }
  }

  if (notifyButton) {
    notifyButton.addEventListener("click", function () {
      if (notifying()) {
        window.localStorage.setItem(NOTIFY_KEY, "off");
        showNotifyButton();
        return;
      }
      Promise.resolve(Notification.requestPermission()).then(function (permission) {
        if (permission === "granted") {
          window.localStorage.setItem(NOTIFY_KEY, "on");
          listen();
        } else {
          notifyButton.title = "The browser did not allow notifications for this site";
        }
        showNotifyButton();
      });
    });
  }

  // -- keyboard shortcuts (desktop) ------------------------------------------------------------

  const help = document.getElementById("shortcuts");
  let selectedId = null;
  let pendingG = false;

  function rows() {
    return Array.from(document.querySelectorAll("tr[data-href]"));
  }

  function select(row) {
    rows().forEach(function (other) {
      other.classList.toggle("selected", other === row);
    });
    if (row) {
      selectedId = row.dataset.approvalId;
      row.scrollIntoView({ block: "nearest" });
    }
  }

  function restoreSelection() {
    if (selectedId === null) {
      return;
    }
    const row = rows().find(function (candidate) {
      return candidate.dataset.approvalId === selectedId;
    });
    if (row) {
      row.classList.add("selected");
    }
  }

  function move(step) {
    const all = rows();
    if (all.length === 0) {
      return;
    }
    const current = all.findIndex(function (row) {
      return row.classList.contains("selected");
    });
    const next = current < 0 ? (step > 0 ? 0 : all.length - 1) : Math.min(all.length - 1, Math.max(0, current + step));
    select(all[next]);
  }

  function decideByKey(selector, verb) {
    const button = document.querySelector(selector);
    if (!button) {
      return false;
    }
    const title = document.querySelector("h1 .tool");
    const what = title ? title.textContent : "this call";
    if (window.confirm(verb + " " + what + "?")) {
      button.click();
    }
    return true;
  }

  function typing(target) {
    return target instanceof HTMLElement &&
      (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
  }

  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) {
      return;
    }
    if (typing(event.target)) {
      if (event.key === "Escape") {
        event.target.blur();
      }
      return;
    }
    if (help && help.open) {
      return;
    }
    const key = event.key;
    if (pendingG) {
      pendingG = false;
      const to = { i: "/", h: "/history", t: "/tools" }[key];
      if (to) {
        event.preventDefault();
        window.location.href = to;
      }
      return;
    }
    let handled = true;
    if (key === "j") {
      move(1);
    } else if (key === "k") {
      move(-1);
    } else if (key === "Enter" || key === "o") {
      const row = document.querySelector("tr.selected[data-href]");
      handled = Boolean(row);
      if (row) {
        window.location.href = row.dataset.href;
      }
    } else if (key === "a") {
      handled = decideByKey("[data-decide] [data-approve]", "Approve");
    } else if (key === "d") {
      handled = decideByKey("[data-decide] [data-deny]", "Deny");
    } else if (key === "r") {
      const reason = document.querySelector("[data-decide] textarea");
      handled = Boolean(reason);
      if (reason) {
        reason.focus();
      }
    } else if (key === "/") {
      const search = document.querySelector("[data-search]");
      handled = Boolean(search);
      if (search) {
        search.focus();
        search.select();
      }
    } else if (key === "?") {
      handled = Boolean(help);
      if (help) {
        help.showModal();
      }
    } else if (key === "g") {
      pendingG = true;
    } else {
      handled = false;
    }
    if (handled) {
      event.preventDefault();
    }
  });

  const helpButton = document.querySelector("[data-shortcuts-open]");
  if (helpButton && help) {
    helpButton.addEventListener("click", function () {
      help.showModal();
    });
  }

  document.addEventListener("click", function (event) {
    const row = event.target instanceof Element ? event.target.closest("tr[data-href]") : null;
    if (row && !(event.target instanceof Element && event.target.closest("a, button"))) {
      select(row);
    }
  });

  formatTimes(document);
  tick();
  window.setInterval(tick, 1000);
  showNotifyButton();
  listen();
})();
