// Small DOM helpers shared by the page's modules. Text goes in through textContent only.

export function makeElement(tag, className, text = "") {
  const el = document.createElement(tag);
  el.className = className;
  el.textContent = text;
  return el;
}

export function makeButton(label, className, onClick) {
  const button = makeElement("button", className, label);
  button.type = "button";
  button.addEventListener("click", onClick);
  return button;
}

// The clipboard API exists only in secure contexts; a plain-http LAN address is not one,
// so fall back to copying the selection of a throwaway textarea there.
async function writeClipboard(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = makeElement("textarea", "visually-hidden");
  area.value = text;
  document.body.append(area);
  area.select();
  const copied = document.execCommand("copy");
  area.remove();
  if (!copied) throw new Error("copy refused");
}

// A "Copy" button: copies what `text()` returns when clicked, and says whether it worked.
export function makeCopyButton(text, { label = "Copy", className = "button button--small" } = {}) {
  let reset = null;
  const button = makeButton(label, className, async () => {
    let outcome = "Copied";
    try {
      await writeClipboard(text());
    } catch {
      outcome = "Copy failed";
    }
    button.textContent = outcome;
    clearTimeout(reset);
    reset = setTimeout(() => (button.textContent = label), 1500);
  });
  return button;
}
