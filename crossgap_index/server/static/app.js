// The search page: one query at a time (text, an uploaded photo, or a stored item), results as a grid.
// The address bar carries text and item queries (/?q=...&mode=...&target=...&k=..., /?item=ID&mode=...).
"use strict";

const $ = (id) => document.getElementById(id);
let current = null; // {kind: "text" | "item" | "photo", value}

function settings() {
  return { mode: $("mode").value, target: $("target").value, k: Number($("k").value) || 12 };
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function remember(query) {
  const params = new URLSearchParams();
  if (query.kind === "text") params.set("q", query.value);
  if (query.kind === "item") params.set("item", String(query.value));
  const s = settings();
  params.set("mode", s.mode);
  params.set("target", s.target);
  params.set("k", String(s.k));
  const url = "/?" + params.toString();
  if (location.pathname + location.search !== url) history.pushState(null, "", url);
}

async function post(body) {
  const init = body instanceof FormData
    ? { method: "POST", body }
    : { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch("/search", init);
  const doc = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(doc.error || `HTTP ${response.status}`);
  return doc;
}

async function run(query, { record = true } = {}) {
  current = query;
  if (record) remember(query);
  const s = settings();
  let body;
  if (query.kind === "photo") {
    body = new FormData();
    body.append("image", query.value);
    for (const [key, value] of Object.entries(s)) body.append(key, String(value));
  } else {
    body = { ...s, [query.kind === "text" ? "text" : "item_id"]: query.value };
  }
  showQuery(query);
  setStatus("searching…");
  try {
    const doc = await post(body);
    render(doc);
    const t = doc.timings;
    const batch = t.inversion_batch_size ? `, inversion batch of ${t.inversion_batch_size}` : "";
    setStatus(`${doc.hits.length} hits · mode ${doc.mode} · ${t.total_ms.toFixed(1)} ms${batch}`);
  } catch (err) {
    $("results").replaceChildren();
    setStatus(err.message, true);
  }
}

function showQuery(query) {
  const view = $("query-view");
  view.replaceChildren();
  if (query.kind === "photo") {
    const img = document.createElement("img");
    img.src = URL.createObjectURL(query.value);
    img.alt = "query photo";
    view.append(img);
  } else if (query.kind === "item") {
    view.textContent = `more like item ${query.value}`;
  }
}

function render(doc) {
  const cards = doc.hits.map((hit) => {
    const card = document.createElement("article");
    card.className = "hit";
    card.dataset.id = String(hit.id);
    card.title = hit.path || hit.text || "";
    if (hit.modality === "image") {
      const img = document.createElement("img");
      img.src = `/items/${hit.id}/image`;
      img.alt = hit.path ? hit.path.split("/").pop() : `item ${hit.id}`;
      card.append(img);
    } else {
      const text = document.createElement("div");
      text.className = "text";
      text.textContent = hit.text;
      card.append(text);
    }
    const meta = document.createElement("div");
    meta.className = "meta";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    const id = document.createElement("span");
    id.textContent = `#${hit.id}`;
    meta.append(score, id);
    const ranks = document.createElement("div");
    ranks.className = "ranks";
    for (const [list, rank] of Object.entries(hit.ranks)) {
      const r = document.createElement("span");
      r.className = "rank";
      r.dataset.list = list;
      r.textContent = `${list} #${rank}`;
      ranks.append(r);
    }
    card.append(meta, ranks);
    card.addEventListener("click", () => {
      $("q").value = "";
      run({ kind: "item", value: hit.id });
    });
    return card;
  });
  $("results").replaceChildren(...cards);
}

function fromAddress() {
  const params = new URLSearchParams(location.search);
  for (const key of ["mode", "target", "k"]) if (params.has(key)) $(key).value = params.get(key);
  if (params.get("q")) {
    $("q").value = params.get("q");
    run({ kind: "text", value: params.get("q") }, { record: false });
  } else if (params.get("item")) {
    run({ kind: "item", value: Number(params.get("item")) }, { record: false });
  }
}

function searchPhoto(file) {
  if (!file) return;
  $("q").value = "";
  run({ kind: "photo", value: file });
}

async function start() {
  try {
    const response = await fetch("/info");
    const info = await response.json();
    if (!response.ok) throw new Error(info.error || `HTTP ${response.status}`);
    for (const mode of info.modes) $("mode").append(new Option(mode, mode));
    $("mode").value = "intra"; // the API's default; "auto" is the index's tuned (or default) cross mode
    $("k").max = String(info.limits.max_k);
    setStatus(`${info.counts.image || 0} images, ${info.counts.text || 0} texts · model ${info.model}`);
  } catch (err) {
    setStatus(`cannot reach the server: ${err.message}`, true);
    return;
  }
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("q").value.trim();
    if (text) run({ kind: "text", value: text });
    else if (current) run(current);
  });
  $("photo").addEventListener("change", () => searchPhoto($("photo").files[0]));
  for (const key of ["mode", "target"]) $(key).addEventListener("change", () => current && run(current));
  addEventListener("popstate", fromAddress);
  addEventListener("dragover", (event) => { event.preventDefault(); $("drop").hidden = false; });
  $("drop").addEventListener("dragleave", () => { $("drop").hidden = true; });
  addEventListener("drop", (event) => {
    event.preventDefault();
    $("drop").hidden = true;
    searchPhoto(event.dataTransfer.files[0]);
  });
  document.body.dataset.ready = "true";
  fromAddress();
}

start();
