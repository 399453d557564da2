// MathJax 2 (shipped by the jupyter-server-mathjax package, copied into
// the site by docs/hooks.py: no CDN): typeset what pymdownx.arithmatex
// marked, \( \) and \[ \] inside elements of class "arithmatex".
window.MathJax = {
  tex2jax: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
    ignoreClass: ".*",
    processClass: "arithmatex",
  },
  TeX: { extensions: ["AMSmath.js", "AMSsymbols.js"] },
  // The package ships the STIX-Web fonts only (as Jupyter uses them).
  "HTML-CSS": {
    availableFonts: ["STIX-Web"], preferredFont: "STIX-Web",
    webFont: "STIX-Web", imageFont: null,
  },
  showMathMenu: false,
  messageStyle: "none",
};
