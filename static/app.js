// Optional niceties; every page works without this file.
document.addEventListener("DOMContentLoaded", function () {
  // "Select every completion on this page" for bulk labelling.
  document.querySelectorAll("[data-pick-all]").forEach(function (all) {
    var boxes = Array.prototype.slice.call(document.querySelectorAll('input[type="checkbox"][name="ids"]'));
    (all.closest(".js-only") || all).hidden = false;
    all.addEventListener("change", function () {
      boxes.forEach(function (box) { box.checked = all.checked; });
    });
  });
  // Copy a new API key's secret.
  document.querySelectorAll("[data-copy]").forEach(function (button) {
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source || !navigator.clipboard) { return; }
    button.hidden = false;
    button.addEventListener("click", function () {
      navigator.clipboard.writeText(source.textContent).then(function () { button.textContent = "Copied"; });
    });
  });
});
