// MathJax 2 (shipped by the jupyter-server-mathjax package, copied into
// the site by docs/hooks.py: no CDN): typeset what pymdownx.arithmatex
// wrote, \( \) and \[ \], anywhere but code: the pages' and the
// headings' in the navigation (a heading's math is also in the toc).
window.MathJax = {
  tex2jax: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  TeX: { extensions: ["AMSmath.js", "AMSsymbols.js"] },
  // The package ships the STIX-Web fonts only (as Jupyter uses them).
  "HTML-CSS": {
    availableFonts: ["STIX-Web"], preferredFont: "STIX-Web",
    webFont: "STIX-Web", imageFont: null,
  },
  // No hidden MathML copy of each formula: it asks for fonts that the
  // package does not ship (404s), and the page needs none of it.
  menuSettings: { assistiveMML: false },
  showMathMenu: false,
  messageStyle: "none",
};
