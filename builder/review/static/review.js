// corpus review: a select-all box per table. Everything else is plain HTML forms.
document.addEventListener("DOMContentLoaded", () => {
  for (const box of document.querySelectorAll("input.select-all")) {
    box.addEventListener("change", () => {
      for (const item of document.querySelectorAll("input." + box.dataset.target)) {
        item.checked = box.checked;
      }
    });
  }
});
