// embedlab interactive embedding map: SVG scatter, colour by a metadata column, thumbnail on hover, search.
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("map-data").textContent);
  var NS = "http://www.w3.org/2000/svg";
  var W = 800, H = 600, PAD = {l: 58, r: 16, t: 14, b: 46};
  var PALETTE = ["#1c7ed6", "#f76707", "#2f9e44", "#e03131", "#7048e8", "#0c8599", "#c2255c", "#66a80f",
                 "#f59f00", "#5c940d", "#862e9c", "#495057"];
  var TIP_COLUMNS = ["role", "split", "group", "width", "height", "mean_luma"];   // the colour column comes first
  var state = {view: 0, colour: D.color_by, query: ""}, hovered = null;
  var n = D.names.length;

  function el(tag, attrs, parent) {
    var e = document.createElementNS(NS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }

  function colourScale(values) {
    var numeric = values.every(function (v) { return v === null || typeof v === "number"; });
    var distinct = Array.from(new Set(values.map(String)));
    if (numeric && distinct.length > PALETTE.length) {
      var nums = values.filter(function (v) { return v !== null; });
      var lo = Math.min.apply(null, nums), hi = Math.max.apply(null, nums);
      var f = function (v) {
        if (v === null) return "#ced4da";
        var t = hi > lo ? (v - lo) / (hi - lo) : 0.5;
        return "hsl(" + Math.round(240 - 200 * t) + ",70%," + Math.round(35 + 20 * t) + "%)";
      };
      return {colour: f, legend: [[f(lo), "low " + lo], [f((lo + hi) / 2), "middle"], [f(hi), "high " + hi]]};
    }
    var counts = {};
    values.forEach(function (v) { counts[String(v)] = (counts[String(v)] || 0) + 1; });
    var keys = Object.keys(counts).sort(function (a, b) { return counts[b] - counts[a] || (a < b ? -1 : 1); });
    var top = keys.slice(0, PALETTE.length - 1), idx = {};
    top.forEach(function (k, i) { idx[k] = PALETTE[i]; });
    var other = keys.length - top.length;
    var legend = top.map(function (k) { return [idx[k], (k === "" ? "(blank)" : k) + " (" + counts[k] + ")"]; });
    if (other > 0) legend.push([PALETTE[PALETTE.length - 1], "other: " + other + " values"]);
    return {colour: function (v) { return idx[String(v)] || PALETTE[PALETTE.length - 1]; }, legend: legend};
  }

  function draw() {
    var V = D.views[state.view], plot = document.getElementById("plot");
    plot.textContent = "";
    var svg = el("svg", {viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": V.name + " map"}, plot);
    var xs = V.xy.map(function (p) { return p[0]; }), ys = V.xy.map(function (p) { return p[1]; });
    if (V.arrow) { xs = xs.concat([V.arrow[0][0], V.arrow[1][0]]); ys = ys.concat([V.arrow[0][1], V.arrow[1][1]]); }
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs), y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    var sx = function (x) { return PAD.l + (x - x0) / ((x1 - x0) || 1) * (W - PAD.l - PAD.r); };
    var sy = function (y) { return H - PAD.b - (y - y0) / ((y1 - y0) || 1) * (H - PAD.t - PAD.b); };
    el("rect", {x: PAD.l, y: PAD.t, width: W - PAD.l - PAD.r, height: H - PAD.t - PAD.b, fill: "none", stroke: "#dee2e6"}, svg);
    var t = el("text", {x: (W + PAD.l) / 2, y: H - 12, "text-anchor": "middle", "class": "axis"}, svg);
    t.textContent = V.axes[0];
    t = el("text", {x: 16, y: (H - PAD.b) / 2, "text-anchor": "middle", "class": "axis",
                    transform: "rotate(-90 16 " + (H - PAD.b) / 2 + ")"}, svg);
    t.textContent = V.axes[1];
    var values = D.columns[state.colour], scale = colourScale(values);
    var q = state.query.toLowerCase(), hits = 0;
    for (var i = 0; i < n; i++) {
      var hit = q && (D.names[i].toLowerCase().indexOf(q) >= 0 || String(D.columns[D.label][i]).toLowerCase().indexOf(q) >= 0);
      if (hit) hits++;
      var c = el("circle", {cx: sx(V.xy[i][0]).toFixed(1), cy: sy(V.xy[i][1]).toFixed(1), r: hit ? 7 : 5,
                            fill: scale.colour(values[i]), "class": "pt" + (q ? (hit ? " hit" : " dim") : ""), "data-i": i}, svg);
    }
    if (V.arrow) {
      var defs = el("defs", {}, svg), m = el("marker", {id: "head", viewBox: "0 0 10 10", refX: 9, refY: 5,
                                                        markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse"}, defs);
      el("path", {d: "M0,0 L10,5 L0,10 z", fill: "#000"}, m);
      el("line", {x1: sx(V.arrow[0][0]), y1: sy(V.arrow[0][1]), x2: sx(V.arrow[1][0]), y2: sy(V.arrow[1][1]),
                  stroke: "#000", "stroke-width": 2.5, "marker-end": "url(#head)", "class": "residual"}, svg);
    }
    document.getElementById("found").textContent = q ? hits + " of " + n + " match" : "";
    document.getElementById("legend-title").textContent = "Colour: " + state.colour;
    var legend = document.getElementById("legend");
    legend.textContent = "";
    scale.legend.forEach(function (it) {
      var d = document.createElement("div"), s = document.createElement("span");
      s.className = "swatch"; s.style.background = it[0];
      d.appendChild(s); d.appendChild(document.createTextNode(it[1])); d.title = it[1];
      legend.appendChild(d);
    });
    document.getElementById("arrow-note").textContent = V.arrow ? "Arrow: the residual, from the from set toward the to set" +
      (V.name === "UMAP" ? " (UMAP is not linear: drawn between the two sets' centroids)." : " (projected on PC1-PC2).") : "";
  }

  function showTip(ev) {
    var i = ev.target.getAttribute && ev.target.getAttribute("data-i");
    var tip = document.getElementById("tip");
    if (i === null || i === undefined) {
      tip.style.display = "none";
      if (hovered) { hovered.classList.remove("hover"); hovered = null; }
      return;
    }
    i = +i;
    tip.textContent = "";
    if (D.thumbs[i]) { var img = document.createElement("img"); img.src = D.thumbs[i]; img.alt = D.names[i]; tip.appendChild(img); }
    var b = document.createElement("b"); b.textContent = D.columns[D.label][i]; tip.appendChild(b);
    var shown = [state.colour].concat(TIP_COLUMNS.filter(function (k) { return k !== state.colour; }));
    shown.forEach(function (k) {
      if (k === D.label || !(k in D.columns)) return;
      var line = document.createElement("div"); line.textContent = k + ": " + D.columns[k][i]; tip.appendChild(line);
    });
    if (hovered) hovered.classList.remove("hover");
    hovered = ev.target; hovered.classList.add("hover");
    tip.style.display = "block";
    var w = tip.offsetWidth, h = tip.offsetHeight, x = ev.clientX + 14, y = ev.clientY + 14;
    if (x + w > window.innerWidth) x = Math.max(4, ev.clientX - w - 14);     // keep it beside the point, on screen
    if (y + h > window.innerHeight) y = Math.max(4, ev.clientY - h - 14);
    tip.style.left = x + "px"; tip.style.top = y + "px";
  }

  function setup() {
    var views = document.getElementById("views");
    D.views.forEach(function (V, k) {
      var lab = document.createElement("label"), r = document.createElement("input");
      r.type = "radio"; r.name = "view"; r.value = k; r.checked = k === 0; r.id = "view-" + V.name.toLowerCase();
      r.addEventListener("change", function () { state.view = k; draw(); });
      lab.appendChild(r); lab.appendChild(document.createTextNode(" " + V.name + " ")); views.appendChild(lab);
    });
    var sel = document.getElementById("colour");
    Object.keys(D.columns).forEach(function (k) {
      var o = document.createElement("option"); o.value = k; o.textContent = k; o.selected = k === state.colour; sel.appendChild(o);
    });
    sel.addEventListener("change", function () { state.colour = sel.value; draw(); });
    document.getElementById("search").addEventListener("input", function (e) { state.query = e.target.value; draw(); });
    var plot = document.getElementById("plot");
    plot.addEventListener("mousemove", showTip);
    plot.addEventListener("mouseover", showTip);
    plot.addEventListener("mouseleave", function () { document.getElementById("tip").style.display = "none"; });
    draw();
  }
  setup();
})();
