// Keeping the approver's place when a live update swaps in new markup (see inbox.js): what they
// opened, typed and focused moves over, the rows they are reading stay where they were on screen,
// and calls that arrived out of sight above them are announced instead of pushing them down.
"use strict";

(function () {
  // An update swaps in new markup, but what the approver did to the old (a "show all" opened,
  // a reason half typed, an edit, the focus) is theirs and moves over.
  // Elements are matched by id or data-key; anything else by its position under the nearest
  // such ancestor, which an update leaves alone.
  function nameOf(element) {
    if (element.id) {
      return "#" + element.id;
    }
    return element.dataset.key ? "@" + element.dataset.key : null;
  }

  function named(root) {
    const found = new Map();
    [root].concat(Array.from(root.querySelectorAll("[id], [data-key]"))).forEach(function (element) {
      const name = nameOf(element);
      if (name !== null && !found.has(name)) {
        found.set(name, element);
      }
    });
    return found;
  }

  function placeOf(element, root) {
    const path = [];
    let at = element;
    while (at !== root && nameOf(at) === null) {
      path.unshift(Array.prototype.indexOf.call(at.parentElement.children, at));
      at = at.parentElement;
    }
    return { name: nameOf(at), path: path, tag: element.tagName };
  }

  function find(place, names) {
    let at = names.get(place.name);
    for (let step = 0; at && step < place.path.length; step++) {
      at = at.children[place.path[step]];
    }
    return at && at.tagName === place.tag ? at : null;
  }

  function edited(control) {
    if (control instanceof HTMLSelectElement) {
      return Array.from(control.options).some(function (option) {
        return option.selected !== option.defaultSelected;
      });
    }
    if (control.type === "checkbox" || control.type === "radio") {
      return control.checked !== control.defaultChecked;
    }
    return control.value !== control.defaultValue;
  }

  function seenHash(form) {
    return form ? form.querySelector("input[name=seen_hash]") : null;
  }

  // Carries the approver's state from `current` into `fresh` (not yet in the page); the returned
  // function, called once `fresh` is, puts the rows being read and the focus back. Nothing the
  // approver opened folds up under them either.
  function keep(current, fresh) {
    const anchor = rowsInView(current);
    const names = named(fresh);
    current.querySelectorAll("details[data-key]").forEach(function (details) {
      const twin = names.get(nameOf(details));
      if (twin instanceof HTMLDetailsElement) {
        twin.open = details.open;
      }
    });
    const focused = current.contains(document.activeElement) ? document.activeElement : null;
    const place = focused && placeOf(focused, current);
    let selection = null;
    try {
      if (focused && typeof focused.selectionStart === "number") {
        selection = [focused.selectionStart, focused.selectionEnd, focused.selectionDirection];
      }
    } catch (error) {
      // Number inputs have no selection.
    }
    // The very element moves over, so typing that lands while the update is swapped in is kept too.
    current.querySelectorAll("input[id], textarea[id], select[id]").forEach(function (control) {
      if (control.type === "hidden" || !(control === focused || edited(control))) {
        return;
      }
      const twin = names.get("#" + control.id);
      if (!twin || twin.tagName !== control.tagName || twin.type !== control.type || twin.name !== control.name) {
        return;
      }
      const typedAgainst = seenHash(control.form);
      twin.replaceWith(control);
      // Edits typed against other arguments must not be applied to new ones: their form keeps the
      // hash of the arguments they were typed against, so the broker refuses it as changed.
      const kept = seenHash(control.form);
      if (control.name.startsWith("edit.") && typedAgainst && kept) {
        kept.value = typedAgainst.value;
      }
    });
    return function () {
      holdRows(anchor, fresh);
      const again = place && find(place, named(fresh));
      if (again) {
        again.focus({ preventScroll: true });
        if (selection && again === focused) {
          again.setSelectionRange(selection[0], selection[1], selection[2]);
        }
      }
    };
  }

  // -- rows stay where they are on screen -------------------------------------------------------

  // The browser's own scroll anchoring (CSS overflow-anchor) cannot help: its anchor is a node
  // inside the list, and an update replaces the whole list, so the anchor is gone and a call
  // arriving above would push every row down under the approver's thumb. Rows are matched by
  // approval id instead, which survives the swap.
  const ROWS = "tr[data-approval-id]";

  // The rows on screen, top first, with where they are; none when the page is not scrolled, so
  // a call arriving while the approver is at the top is simply seen there.
  function rowsInView(root) {
    if (window.scrollY <= 0) {
      return [];
    }
    return Array.from(root.querySelectorAll(ROWS)).map(function (row) {
      return { id: row.dataset.approvalId, top: row.getBoundingClientRect().top };
    }).filter(function (seen) {
      return seen.top >= 0 && seen.top < window.innerHeight;
    });
  }

  function rowOf(root, id) {
    return Array.from(root.querySelectorAll(ROWS)).find(function (row) {
      return row.dataset.approvalId === id;
    }) || null;
  }

  // Scrolls so the first row that is still listed is back where it was (a decided one is gone),
  // then announces the new rows this leaves above the top of the screen.
  function holdRows(anchor, fresh) {
    for (const seen of anchor) {
      const row = rowOf(fresh, seen.id);
      if (row) {
        window.scrollBy(0, row.getBoundingClientRect().top - seen.top);
        break;
      }
    }
    if (anchor.length > 0) {
      fresh.querySelectorAll(ROWS + ".arrived").forEach(function (row) {
        if (row.getBoundingClientRect().top < 0) {
          unseen.add(row.dataset.approvalId);
        }
      });
    }
    announce();
  }

  // -- "n new calls above" ------------------------------------------------------------------------

  const notice = document.querySelector("[data-new-rows]");
  const unseen = new Set();

  // A call counts until its row has been on screen, or is no longer listed.
  function announce() {
    unseen.forEach(function (id) {
      const row = rowOf(document, id);
      if (!row || row.getBoundingClientRect().top >= 0) {
        unseen.delete(id);
      }
    });
    if (notice) {
      notice.hidden = unseen.size === 0;
      notice.textContent = unseen.size === 1 ? "1 new call above" : unseen.size + " new calls above";
    }
  }

  if (notice) {
    notice.addEventListener("click", function () {
      const list = document.getElementById(notice.dataset.newRows);
      if (list) {
        list.scrollIntoView({ block: "start" });
      }
      announce();
    });
    window.addEventListener("scroll", function () {
      if (unseen.size > 0) {
        announce();
      }
    }, { passive: true });
  }

  window.brokerPlace = { keep: keep };
})();
