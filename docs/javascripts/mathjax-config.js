// MathJax 2 (shipped by the jupyter-server-mathjax package, copied into
// the site by docs/hooks.py: no CDN): typeset what pymdownx.arithmatex
// marked, \( \) and \[ \] inside elements of class "arithmatex", and
// the headings' math in the navigation (Material's md-nav__link).
window.MathJax = {
  tex2jax: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
    ignoreClass: ".*",
    processClass: "arithmatex|md-nav__link",
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
