// The hub's web page: the search list (/) and a ticket's card (/tickets/ID), over the JSON API.
// Cards are user content: every string from the API goes into the page as a text node or an
// attribute value, never parsed as HTML, and links are built from checked ids.
"use strict";

const API = "/api/v1/tickets";
const SVG = "http://www.w3.org/2000/svg";
const FILTERS = ["dataset", "model", "min_density", "max_density", "min_accuracy", "signer"];
const SERIES = [
  // [name in the card, label, class]: the ticket and the two controls of `ticket find`
  ["ticket", "ticket", "s-ticket"],
  ["random", "random pruning", "s-random"],
  ["reinit", "re-init", "s-reinit"],
];
const HEX_ID = /^[0-9a-f]{8,64}$/;

// ------------------------------------------------------------------ helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function percent(value) {
  return typeof value === "number" ? (100 * value).toFixed(2) + "%" : "-";
}

function number(value) {
  return typeof value === "number" ? value.toFixed(4) : "-";
}

function ticketLink(contentId, text) {
  // Only a hex id makes a link: anything else from the API is shown as plain text.
  if (typeof contentId !== "string" || !HEX_ID.test(contentId)) return document.createTextNode("-");
  return el("a", { href: "/tickets/" + contentId }, text || contentId.slice(0, 12));
}

function setStatus(text, isError) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(isError));
  status.hidden = text === "";
}

async function getJson(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    body = null;
  }
  if (!response.ok) {
    const detail = body && body.detail !== undefined ? body.detail : response.statusText;
    throw new Error(
      "the hub answered " + response.status + ": " +
      (typeof detail === "string" ? detail : JSON.stringify(detail)));
  }
  return body;
}

// ------------------------------------------------------------------ search page

async function showSearch() {
  const params = new URLSearchParams(window.location.search);
  const query = new URLSearchParams();
  for (const name of FILTERS) {
    const value = (params.get(name) || "").trim();
    document.getElementById("f-" + name).value = value;
    if (value !== "") query.set(name, value);
  }
  query.set("limit", "200");
  const table = document.getElementById("results");
  let answer;
  try {
    answer = await getJson(API + "?" + query.toString());
  } catch (error) {
    table.hidden = true;
    setStatus(error.message, true);
    return;
  }
  const rows = answer.tickets.map((entry) =>
    el("tr", { "data-id": entry.content_id },
      el("td", {}, ticketLink(entry.content_id)),
      el("td", {}, entry.model),
      el("td", {}, entry.task),
      el("td", { class: "num" }, percent(entry.density)),
      el("td", { class: "num" }, number(entry.accuracy)),
      el("td", {}, entry.parent ? ticketLink(entry.parent) : "-"),
      el("td", {}, (entry.verified_by || []).join(", ") || "-"),
      el("td", {}, String(entry.created_at || "").slice(0, 16).replace("T", " "))));
  table.tBodies[0].replaceChildren(...rows);
  table.hidden = rows.length === 0;
  const count = rows.length === 1 ? "1 ticket" : rows.length + " tickets";
  setStatus(rows.length === 0 ? "no tickets match" :
    answer.more ? "the first " + count + "; narrow the filters for the rest" : count);
}

// ------------------------------------------------------------------ ticket page

async function showTicket() {
  const id = decodeURIComponent(window.location.pathname.split("/").pop() || "").toLowerCase();
  if (!HEX_ID.test(id)) {
    setStatus("a ticket id is 8 to 64 hex characters", true);
    return;
  }
  let answer;
  try {
    answer = await getJson(API + "/" + id);
  } catch (error) {
    setStatus(error.message, true);
    return;
  }
  const entry = answer.entry;
  const card = answer.card;
  document.title = (card && card.title ? card.title : entry.model + " on " + entry.task) +
    " · ticketfleet hub";
  document.getElementById("title").textContent =
    card && card.title ? card.title : entry.model + " on " + entry.task;
  document.getElementById("content-id").textContent = entry.content_id;
  document.getElementById("description").textContent =
    card ? card.description : "This ticket has no card.";
  showFacts(entry, card);
  const points = card ? card.metrics : [{ density: entry.density, metrics: entry.metrics, controls: {} }];
  const metric = chooseMetric(points);
  drawPlot(document.getElementById("plot"), points, metric);
  fillMetrics(points, metric);
  await showLineage(entry, card);
  showDownload(entry, card);
  document.getElementById("ticket").hidden = false;
  setStatus("");
}

function showFacts(entry, card) {
  const facts = [
    ["task", card ? card.task : entry.task],
    ["intended use", card ? card.intended_use : ""],
    ["dataset", entry.task + (entry.sites ? " (" + entry.sites.join(", ") + ")" : "")],
    ["how it was found", card ? card.data.how : entry.method],
    ["model", entry.model + " " + JSON.stringify(entry.model_args)],
    ["density", percent(entry.density) + " (" + entry.kept_weights.toLocaleString("en") +
      " of " + entry.total_weights.toLocaleString("en") + " prunable weights kept)"],
    ["accuracy", number(entry.accuracy)],
    ["license", card ? card.license : ""],
    ["signed by", (entry.verified_by || []).join(", ") || "-"],
    ["created", entry.created_at],
    ["published", entry.published_at],
  ];
  const list = document.getElementById("facts");
  list.replaceChildren();
  for (const [name, value] of facts) {
    list.append(el("dt", {}, name), el("dd", { "data-fact": name }, value === "" ? "-" : value));
  }
}

function chooseMetric(points) {
  // Accuracy when the card has it; else the first metric it records (e.g. auc).
  const names = new Set();
  for (const point of points) for (const name of Object.keys(point.metrics || {})) names.add(name);
  return names.has("accuracy") ? "accuracy" : [...names].sort()[0] || "accuracy";
}

function valueOf(point, series, metric) {
  const values = series === "ticket" ? point.metrics : (point.controls || {})[series];
  const value = values ? values[metric] : undefined;
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

function drawPlot(container, points, metric) {
  // x: density on a log scale, dense on the left (the order pruning goes); y: the metric.
  const width = 560, height = 330, left = 56, right = 16, top = 34, bottom = 44, inset = 24;
  const densities = points.map((p) => p.density).filter((d) => d > 0);
  const values = [];
  for (const point of points) {
    for (const [series] of SERIES) {
      const value = valueOf(point, series, metric);
      if (value !== null) values.push(value);
    }
  }
  container.replaceChildren();
  if (densities.length === 0 || values.length === 0) {
    container.append(el("p", { class: "hint" }, "no metrics recorded"));
    return;
  }
  let [xMax, xMin] = [Math.log10(Math.max(...densities)), Math.log10(Math.min(...densities))];
  if (xMax - xMin < 1e-9) [xMax, xMin] = [xMax + 0.05, xMin - 0.05];
  let [yMin, yMax] = [Math.min(...values), Math.max(...values)];
  const pad = Math.max((yMax - yMin) * 0.1, 0.01);
  [yMin, yMax] = [Math.max(0, yMin - pad), Math.min(1, yMax + pad)];
  if (yMax <= yMin) [yMin, yMax] = [yMin - 0.01, yMax + 0.01];
  // `inset` keeps the first and last points (and their labels) off the plot's edges.
  const x = (d) =>
    left + inset + ((xMax - Math.log10(d)) / (xMax - xMin)) * (width - left - right - 2 * inset);
  const y = (v) => top + ((yMax - v) / (yMax - yMin)) * (height - top - bottom);

  const plot = svg("svg", {
    id: "plot-svg", viewBox: "0 0 " + width + " " + height, role: "img",
    "aria-label": metric + " against density", "data-metric": metric,
  });
  plot.append(svg("line", { class: "axis", x1: left, y1: height - bottom, x2: width - right, y2: height - bottom }));
  plot.append(svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: height - bottom }));
  // A tick at every level, a label only where it clears its neighbours: a 15-level search
  // would print its percentages over each other. The sparsest (the ticket itself) always.
  const ticks = [...new Set(densities)].sort((a, b) => b - a);
  const gap = 48; // px: wider than "100.00%" at 11px
  let labelled = -Infinity;
  ticks.forEach((density, index) => {
    plot.append(svg("line", { class: "tick", x1: x(density), y1: height - bottom, x2: x(density), y2: height - bottom + 5 }));
    const isLast = index === ticks.length - 1;
    if (x(density) - labelled >= gap && (isLast || x(ticks[ticks.length - 1]) - x(density) >= gap)) {
      plot.append(svg("text", { class: "tick-label", x: x(density), y: height - bottom + 18, "text-anchor": "middle" }, percent(density)));
      labelled = x(density);
    }
  });
  for (let i = 0; i <= 4; i++) {
    const value = yMin + ((yMax - yMin) * i) / 4;
    plot.append(svg("line", { class: "grid", x1: left, y1: y(value), x2: width - right, y2: y(value) }));
    plot.append(svg("text", { class: "tick-label", x: left - 6, y: y(value) + 4, "text-anchor": "end" }, value.toFixed(3)));
  }
  plot.append(svg("text", { class: "axis-label", x: (left + width - right) / 2, y: height - 6, "text-anchor": "middle" }, "density (weights kept, log scale)"));
  plot.append(svg("text", { class: "axis-label", x: 14, y: (top + height - bottom) / 2, "text-anchor": "middle", transform: "rotate(-90 14 " + (top + height - bottom) / 2 + ")" }, metric));

  SERIES.forEach(([series, label, cls], index) => {
    const drawn = points
      .map((point) => [point.density, valueOf(point, series, metric)])
      .filter(([density, value]) => density > 0 && value !== null)
      .sort((a, b) => b[0] - a[0]);
    if (drawn.length === 0) return;
    const group = svg("g", { class: "series " + cls, "data-series": series });
    group.append(svg("polyline", { points: drawn.map(([d, v]) => x(d) + "," + y(v)).join(" ") }));
    for (const [density, value] of drawn) {
      const dot = svg("circle", {
        class: "point", cx: x(density), cy: y(value), r: 4,
        "data-series": series, "data-density": density, "data-value": value,
      });
      dot.append(svg("title", {}, label + ": " + metric + " " + number(value) + " at " + percent(density)));
      group.append(dot);
    }
    plot.append(group);
    const legendX = left + index * 130;  // one row above the plot area
    plot.append(svg("circle", { class: "legend " + cls, cx: legendX + 4, cy: 14, r: 4 }));
    plot.append(svg("text", { class: "legend-label", x: legendX + 14, y: 18 }, label));
  });
  container.append(plot);
}

function fillMetrics(points, metric) {
  const rows = points.map((point) =>
    el("tr", { "data-density": point.density },
      el("td", { class: "num" }, percent(point.density)),
      ...SERIES.map(([series]) =>
        el("td", { class: "num", "data-series": series }, number(valueOf(point, series, metric))))));
  const table = document.getElementById("metrics");
  table.tHead.rows[0].cells[1].textContent = "ticket " + metric;
  table.tBodies[0].replaceChildren(...rows);
}

async function showLineage(entry, card) {
  const parent = document.getElementById("parent");
  if (entry.parent) {
    const relation = card ? card.lineage.relation : "derived";
    parent.replaceChildren(relation + " from ", ticketLink(entry.parent, entry.parent.slice(0, 12)));
  } else {
    parent.replaceChildren("found from scratch: no parent ticket");
  }
  const children = document.getElementById("children");
  children.replaceChildren();
  try {
    const answer = await getJson(API + "?parent=" + entry.content_id + "&limit=50");
    for (const child of answer.tickets) {
      children.append(el("li", { "data-id": child.content_id }, "derived from it: ",
        ticketLink(child.content_id), " (" + percent(child.density) + ", accuracy " +
        number(child.accuracy) + ")"));
    }
  } catch (error) {
    children.append(el("li", { class: "error" }, error.message));
  }
}

function showDownload(entry, card) {
  const short = entry.content_id.slice(0, 12);
  const download = document.getElementById("download");
  download.setAttribute("href", API + "/" + entry.content_id + "/bundle");
  download.setAttribute("download", short + ".ticket");
  const cardLink = document.getElementById("download-card");
  cardLink.hidden = !card;
  cardLink.setAttribute("href", API + "/" + entry.content_id + "/card");
  cardLink.setAttribute("download", short + ".ticket.card");
  document.getElementById("check-id").textContent = entry.content_id;
  document.getElementById("check-sha").textContent = entry.blob_sha256;
  document.getElementById("pull-command").textContent =
    "ticket pull " + entry.content_id + " --hub " + window.location.origin +
    " --out " + short + ".ticket --key PUBLISHER.pub";
}

// ------------------------------------------------------------------ start

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  const shown = page === "ticket" ? showTicket() : showSearch();
  shown
    .catch((error) => setStatus("the page failed: " + error.message, true))
    .finally(() => {
      // Milliseconds from navigation start to now: the page's own load time (bench/hub.py).
      document.body.setAttribute("data-ready-ms", String(Math.round(performance.now())));
      document.body.setAttribute("data-ready", "true");
    });
});
