// The console's only script: live regions, select-all boxes and confirmations. No inline
// scripts, so the Content-Security-Policy can forbid them.
(function () {
  "use strict";

  function csrf() {
    var main = document.querySelector("main[data-csrf]");
    return main ? main.getAttribute("data-csrf") : "";
  }

  // <div data-refresh="/admin/…/fragment" data-interval="2000">: replaced with the fragment's
  // HTML every interval while the page is visible (binding states, import progress).
  function startRefresh(el) {
    var url = el.getAttribute("data-refresh");
    var every = parseInt(el.getAttribute("data-interval") || "2000", 10);
    function tick() {
      if (document.hidden) { return schedule(); }
      fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
        .then(function (r) {
          if (r.redirected || r.status === 401) { window.location.reload(); return null; }
          return r.ok ? r.text() : null;
        })
        .then(function (html) {
          if (html !== null && html !== undefined) {
            var checked = {};
            el.querySelectorAll("input[type=checkbox]:checked").forEach(function (c) { checked[c.value] = true; });
            el.innerHTML = html;
            el.querySelectorAll("input[type=checkbox]").forEach(function (c) { if (checked[c.value]) { c.checked = true; } });
            el.dispatchEvent(new CustomEvent("refreshed", { bubbles: true }));
            if (el.querySelector("[data-refresh-stop]")) { return; }
          }
          schedule();
        })
        .catch(schedule);
    }
    function schedule() { setTimeout(tick, every); }
    schedule();
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(startRefresh);
  });

  // <input type=checkbox data-select-all="name">: toggles every checkbox named `name`.
  document.addEventListener("change", function (e) {
    var t = e.target;
    if (t && t.matches && t.matches("input[data-select-all]")) {
      var name = t.getAttribute("data-select-all");
      document.querySelectorAll("input[type=checkbox][name='" + name + "']").forEach(function (c) {
        c.checked = t.checked;
      });
    }
  });

  // <button data-copy="element-id">: copies that element's text (a textarea's value) to the
  // clipboard and says so in the button, which is a live region for screen readers.
  document.addEventListener("click", function (e) {
    var button = e.target && e.target.closest && e.target.closest("button[data-copy]");
    if (!button) { return; }
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source) { return; }
    var text = source.value !== undefined ? source.value : source.textContent;
    var label = button.getAttribute("data-label") || button.textContent;
    button.setAttribute("data-label", label);
    function said(word) {
      button.textContent = word;
      setTimeout(function () { button.textContent = label; }, 2000);
    }
    function fallback() {
      // Without the Clipboard API (plain http off localhost): select it for Ctrl+C.
      if (source.select) { source.focus(); source.select(); }
      else {
        var range = document.createRange();
        range.selectNodeContents(source);
        var sel = window.getSelection();
        sel.removeAllRanges();
        sel.addRange(range);
      }
      said("Selected: press Ctrl+C");
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () { said("Copied"); }, fallback);
    } else {
      fallback();
    }
  });

  // <form data-confirm="…">: asks before submitting.
  document.addEventListener("submit", function (e) {
    var form = e.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { e.preventDefault(); }
    var token = form.querySelector && form.querySelector("input[name=csrf]");
    if (form.method && form.method.toLowerCase() === "post" && !token) {
      var input = document.createElement("input");
      input.type = "hidden"; input.name = "csrf"; input.value = csrf();
      form.appendChild(input);
    }
  });
})();
