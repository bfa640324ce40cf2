// The confirmation dialog of destructive and changing actions: optional fields (a reason, a
// ttl) and, for destructive ones, a phrase the operator must type exactly.
import { clear, el } from "./dom.js";

export function ask({ title, text = "", fields = [], phrase = null }) {
  const dialog = document.getElementById("confirm");
  const ok = document.getElementById("confirm-ok");
  const typed = document.getElementById("confirm-typed");
  const box = clear(document.getElementById("confirm-fields"));
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-phrase").textContent = phrase || "";
  document.getElementById("confirm-phrase-label").hidden = !phrase;
  typed.value = "";
  const inputs = {};
  for (const field of fields) {
    const input = el("input", { name: field.name, value: field.value || "", autocomplete: "off",
      placeholder: field.placeholder || "", "data-field": field.name });
    inputs[field.name] = input;
    box.append(el("label", {}, field.label, input));
  }
  const check = () => {
    const filled = fields.every((f) => !f.required || inputs[f.name].value.trim());
    ok.disabled = !(filled && (!phrase || typed.value === phrase));
  };
  box.addEventListener("input", check);
  typed.oninput = check;
  check();
  return new Promise((resolve) => {
    const finish = (result) => {
      dialog.onclose = null;
      document.getElementById("confirm-cancel").onclick = null;
      if (dialog.open) dialog.close();
      resolve(result);
    };
    document.getElementById("confirm-cancel").onclick = () => finish(null);
    document.getElementById("confirm-form").onsubmit = (event) => {
      event.preventDefault();
      if (ok.disabled) return;
      const values = {};
      for (const [name, input] of Object.entries(inputs)) values[name] = input.value.trim();
      finish(values);
    };
    dialog.onclose = () => finish(null);
    dialog.showModal();
  });
}
