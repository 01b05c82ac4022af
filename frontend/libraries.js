// The third-party libraries of the chat page, bundled by esbuild (`npm run build`, run by
// `make install`) into chat/static/chat/vendor/libraries.js, which git ignores. The page's
// own modules stay unbundled; chat/static/chat/render.js imports this one, and shows
// replies as plain text when it is missing.
export { default as MarkdownIt } from "markdown-it";
export { default as DOMPurify } from "dompurify";
// The ~40 most common languages; the full set would triple the download.
export { default as hljs } from "highlight.js/lib/common";
