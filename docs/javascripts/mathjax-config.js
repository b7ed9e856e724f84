// MathJax 3, served from this site (assets/mathjax/, copied from the
// django-static-mathjax package at build time): no CDN.
// Typesets the spans that pymdownx.arithmatex (generic mode) emits and the
// markdown cells of the rendered notebooks.
window.MathJax = {
  loader: { paths: { mathjax: new URL("../assets/mathjax", document.currentScript.src).href.replace(/\/$/, "") } },
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex|jp-RenderedMarkdown",
  },
  svg: { fontCache: "global" },
};

document$.subscribe(() => {
  if (window.MathJax && MathJax.typesetPromise) {
    MathJax.startup.output.clearCache();
    MathJax.typesetClear();
    MathJax.texReset();
    MathJax.typesetPromise();
  }
});
