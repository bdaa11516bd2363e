// The template page's live preview: the body and the sample personalisation, sent to the
// admin's preview view as you type (debounced), and the message, its encoding, segments and
// the characters that make it UCS-2 shown below the form. A file, not an inline script:
// the Content-Security-Policy allows scripts from this site only.
"use strict";
(function () {
  function ready(fn) {
    if (document.readyState !== "loading") fn();
    else document.addEventListener("DOMContentLoaded", fn);
  }
  ready(function () {
    var panel = document.getElementById("template-preview");
    var body = document.getElementById("id_body");
    if (!panel || !body) return;
    var sample = document.getElementById("id_sample");
    var language = document.getElementById("id_default_language");
    var text = document.getElementById("template-preview-text");
    var cost = document.getElementById("template-preview-cost");
    var ucs2 = document.getElementById("template-preview-ucs2");
    var errors = document.getElementById("template-preview-errors");
    var csrf = document.querySelector("input[name=csrfmiddlewaretoken]");
    var timer = null;
    var asked = 0;

    function list(element, items) {
      element.replaceChildren();
      items.forEach(function (item) {
        var li = document.createElement("li");
        li.textContent = item;
        element.appendChild(li);
      });
    }

    function show(answer) {
      if (answer.errors) {
        list(errors, answer.errors);
        return;
      }
      list(errors, []);
      text.textContent = answer.text;
      cost.textContent = answer.encoding + ", " + answer.segments + " segment" +
        (answer.segments === 1 ? "" : "s") + ", " + answer.length + " characters";
      list(ucs2, answer.ucs2_characters.map(function (c) {
        return "\u201c" + c.character + "\u201d (" + c.code_point + " " + c.name + ") at position " +
          c.position + " makes it UCS-2";
      }));
    }

    function preview() {
      var form = new FormData();
      form.append("body", body.value);
      form.append("sample", sample ? sample.value : "{}");
      form.append("language", language ? language.value : "");
      var mine = ++asked;
      fetch(panel.dataset.previewUrl, {
        method: "POST",
        body: form,
        credentials: "same-origin",
        headers: {"X-CSRFToken": csrf ? csrf.value : ""},
      })
        .then(function (response) { return response.json(); })
        .then(function (answer) { if (mine === asked) show(answer); })
        .catch(function () { list(errors, ["The preview could not be loaded."]); });
    }

    function later() {
      clearTimeout(timer);
      timer = setTimeout(preview, 250);
    }

    [body, sample, language].forEach(function (field) {
      if (field) field.addEventListener("input", later);
    });
    if (body.value) preview();
  });
})();
