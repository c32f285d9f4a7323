// Copy buttons for code blocks: the one script the dashboard needs (no inline scripts).
document.addEventListener("click", function (event) {
  var button = event.target.closest("button[data-copy-target]");
  if (!button) return;
  var code = document.getElementById(button.getAttribute("data-copy-target"));
  var status = button.parentNode.querySelector(".copied");
  var text = code ? code.textContent : "";
  function done(message) { if (status) status.textContent = message; }
  if (navigator.clipboard && navigator.clipboard.writeText) {
    navigator.clipboard.writeText(text).then(
      function () { done("Copied"); },
      function () { selectCode(code); done("Press Ctrl+C (or ⌘C) to copy"); }
    );
  } else {
    selectCode(code);
    done("Press Ctrl+C (or ⌘C) to copy");
  }
});

function selectCode(node) {
  if (!node) return;
  var range = document.createRange();
  range.selectNodeContents(node);
  var selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
}
