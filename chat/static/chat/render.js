// Replies as Markdown: markdown-it (raw HTML off) renders, DOMPurify sanitizes what it made,
// highlight.js colours code blocks. While a reply streams, the finished blocks are rendered
// once and only the unfinished tail again on each delta.
//
// The libraries are the bundle that `make install` builds from npm. Without it (no Node on
// the machine) replies show as plain text, which is always safe.

import { makeCopyButton, makeElement } from "./dom.js";

const libraries = await import("./vendor/libraries.js").catch(() => null);

// Links only to the web and to mail: no javascript:, data:, or anything relative.
const SAFE_URL = /^(?:https?:|mailto:)/i;
// Nothing that loads, runs, styles or submits. Images are not here to block: markdown
// images become links below, and markdown-it writes no other tag that loads anything.
const PURIFY = {
  ALLOWED_URI_REGEXP: SAFE_URL,
  FORBID_TAGS: ["img", "svg", "math", "style", "form", "input", "button", "textarea"],
  FORBID_ATTR: ["style", "srcset"],
  RETURN_DOM_FRAGMENT: true,
};
// A fence: three or more backticks or tildes, at any indentation (inside a list item too).
const FENCE = /^\s*(`{3,}|~{3,})(.*)$/;
const HEADING = /^#{1,6}(?:\s|$)/;

export const rendersMarkdown = libraries !== null;

function createMarkdown({ MarkdownIt, hljs }) {
  const md = new MarkdownIt({
    html: false,
    linkify: true,
    highlight(code, language) {
      if (!language || !hljs.getLanguage(language)) return ""; // markdown-it escapes it
      return hljs.highlight(code, { language, ignoreIllegals: true }).value;
    },
  });
  // An image is a link to it, never fetched: a remote image would tell its server who
  // reads the reply, and when.
  md.renderer.rules.image = (tokens, index, options, env, self) => {
    const token = tokens[index];
    const alt = self.renderInlineAsText(token.children, options, env) || "image";
    const src = md.utils.escapeHtml(token.attrGet("src") || "");
    return `<a class="image-link" href="${src}">${md.utils.escapeHtml(alt)}</a>`;
  };
  return md;
}

function createPurifier(DOMPurify) {
  const purifier = DOMPurify(window);
  purifier.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A" && node.hasAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer nofollow");
    }
  });
  return purifier;
}

const md = libraries && createMarkdown(libraries);
const purifier = libraries && createPurifier(libraries.DOMPurify);

// A code block with its language and a copy button above it.
function decorateCodeBlock(pre) {
  const code = pre.querySelector("code");
  if (!code) return;
  const language = /(?:^|\s)language-(\S+)/.exec(code.className);
  code.classList.add("hljs");
  const block = makeElement("div", "code-block");
  const bar = makeElement("div", "code-block__bar");
  bar.append(
    makeElement("span", "code-block__language", language ? language[1] : "text"),
    makeCopyButton(() => code.textContent, { className: "button button--small code-block__copy" }),
  );
  pre.replaceWith(block);
  block.append(bar, pre);
}

function renderFragment(text) {
  const fragment = purifier.sanitize(md.render(text), PURIFY);
  for (const pre of fragment.querySelectorAll("pre")) decorateCodeBlock(pre);
  return fragment;
}

// Where the finished blocks of a growing text end: the start of the last top-level block
// that begins after a blank line or a closed fence, outside any fence. Scans each line
// once, as it completes.
class BlockBoundary {
  constructor() {
    this.scanned = 0; // where the first line not yet scanned starts
    this.fence = null; // the marker of the open fence, if any
    this.afterBlank = false;
    this.at = 0;
  }

  advance(text) {
    let end;
    while ((end = text.indexOf("\n", this.scanned)) !== -1) {
      this.scanLine(text.slice(this.scanned, end), this.scanned, end + 1);
      this.scanned = end + 1;
    }
    return this.at;
  }

  scanLine(line, start, next) {
    const fence = FENCE.exec(line);
    if (this.fence) {
      const closes =
        fence && fence[1][0] === this.fence[0] && fence[1].length >= this.fence.length;
      if (closes && fence[2].trim() === "") {
        this.fence = null;
        if (!/^\s/.test(line)) this.at = next;
        this.afterBlank = false;
      }
      return;
    }
    const blank = line.trim() === "";
    const topLevel = !blank && !/^\s/.test(line);
    if (fence && !(fence[1][0] === "`" && fence[2].includes("`"))) {
      this.fence = fence[1];
      if (topLevel) this.at = start; // a fence ends the paragraph or list before it
    } else if (topLevel && this.afterBlank) {
      this.at = start;
    }
    if (topLevel && HEADING.test(line)) this.at = next; // a heading is one line
    this.afterBlank = blank;
  }
}

// One message's text on the page. `show(text)` renders it; while a reply streams each
// call gets the text so far, and only what follows the last finished block is redone.
export class MessageView {
  constructor(el, { markdown }) {
    this.el = el;
    this.markdown = markdown && rendersMarkdown;
    this.el.classList.toggle("message__content--markdown", this.markdown);
    this.reset();
  }

  reset() {
    this.text = "";
    this.rendered = 0; // the text before this index is in `stable`, rendered
    this.boundary = new BlockBoundary();
    this.stable = makeElement("div", "markdown-stable");
    this.tail = makeElement("div", "markdown-tail");
    this.el.replaceChildren();
  }

  show(text) {
    if (text === this.text) return;
    if (!text.startsWith(this.text)) this.reset();
    if (!this.markdown) {
      this.el.append(text.slice(this.text.length)); // a Text node: never parsed as HTML
      this.text = text;
      return;
    }
    this.text = text;
    if (!this.stable.isConnected) this.el.append(this.stable, this.tail);
    const boundary = this.boundary.advance(text);
    if (boundary > this.rendered) {
      this.stable.append(renderFragment(text.slice(this.rendered, boundary)));
      this.rendered = boundary;
    }
    this.tail.replaceChildren(renderFragment(text.slice(this.rendered)));
  }
}
