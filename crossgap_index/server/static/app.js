// The search page: one query at a time (text, an uploaded photo, or a stored item), results as a grid.
// With no query it browses the stored images. The address bar carries text and item queries
// (/?q=...&mode=...&target=...&k=..., /?item=ID&mode=...). Modes show in plain words; the default is
// "auto", what `cgx query --cross` serves, labelled with the mode it resolves to.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null; // {kind: "text" | "item" | "photo", value, modality?}
let page = null; // GET /info's "page": mode choices, what auto serves, list labels, model note
let summary = "";
let counts = { image: 0, text: 0 };
const BROWSE_PAGE = 48;

function settings() {
  return { mode: $("mode").value, target: $("target").value, k: Number($("k").value) || 12 };
}

function label(name) {
  return (page && page.list_labels[name]) || name;
}

function queryModality(query) {
  if (query.kind === "text") return "text";
  if (query.kind === "item") return query.modality || "image";
  return "image";
}

// What a request's mode is served as, in words: auto resolves per query modality; a query that is
// already inter-modal (text -> images) is served plainly.
function servedLabel(query, mode) {
  if (mode !== "auto") return label(mode);
  const modality = queryModality(query);
  if (modality !== settings().target.slice(0, -1)) return `${label("intra")} (the query is already across)`;
  return `${label("auto")}: ${label(page.auto_serves[modality])}`;
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

async function getJson(url, init) {
  const response = await fetch(url, init);
  const doc = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(doc.error || `HTTP ${response.status}`);
  return doc;
}

function post(body) {
  const init = body instanceof FormData
    ? { method: "POST", body }
    : { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) };
  return getJson("/search", init);
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
    render(doc.hits);
    const t = doc.timings;
    const batch = t.inversion_batch_size ? `, inversion batch of ${t.inversion_batch_size}` : "";
    setStatus(`${doc.hits.length} hits · ${servedLabel(query, doc.mode)} · ${t.total_ms.toFixed(1)} ms${batch}`);
  } catch (err) {
    $("results").replaceChildren();
    setStatus(err.message, true);
  }
}

function thumbnail(id, alt) {
  const img = document.createElement("img");
  img.src = `/items/${id}/thumb`;
  img.alt = alt;
  img.loading = "lazy";
  return img;
}

function showQuery(query) {
  const view = $("query-view");
  view.replaceChildren();
  if (query.kind === "photo") {
    const img = document.createElement("img");
    img.alt = "query photo";
    const name = document.createElement("span");
    name.textContent = query.value.name || "";
    // a photo this browser cannot show (HEIC, TIFF, a broken file): its name only, never a broken-image icon
    img.addEventListener("error", () => img.remove());
    img.src = URL.createObjectURL(query.value);
    view.append(img, name);
  } else if (query.kind === "item") {
    if (queryModality(query) === "image") view.append(thumbnail(query.value, `item ${query.value}`));
    const words = document.createElement("span");
    words.textContent = `more like this (item ${query.value})`;
    view.append(words);
  }
}

function fileName(path) {
  return path ? path.split("/").pop() : "";
}

function card(item) {
  const card = document.createElement("article");
  card.className = "hit";
  card.dataset.id = String(item.id);
  card.title = item.path || item.text || "";
  if (item.modality === "image") {
    const name = fileName(item.path) || `item ${item.id}`;
    card.append(thumbnail(item.id, name));
    const caption = document.createElement("div");
    caption.className = "name";
    const original = document.createElement("a");
    original.className = "original";
    original.href = `/items/${item.id}/image`;
    original.target = "_blank";
    original.rel = "noopener";
    original.title = "open the original file";
    original.textContent = name;
    original.addEventListener("click", (event) => event.stopPropagation()); // opens it, not "more like this"
    caption.append(original);
    card.append(caption);
  } else {
    const text = document.createElement("div");
    text.className = "text";
    text.textContent = item.text;
    card.append(text);
  }
  card.addEventListener("click", () => {
    $("q").value = "";
    run({ kind: "item", value: item.id, modality: item.modality });
  });
  return card;
}

// The number a card leads with: the similarity, or for a merged ranking (whose own value, such as an RRF
// 0.033, means nothing to a reader) the better of its lists' similarities; the merged value stays in the tooltip.
function headline(hit, merged) {
  const legs = Object.values(hit.scores || {});
  if (!merged || legs.length === 0) return { text: hit.score.toFixed(3), title: "similarity" };
  return {
    text: Math.max(...legs).toFixed(3),
    title: `best list's similarity (merged ranking value ${hit.score.toFixed(4)})`,
  };
}

function render(hits) {
  const merged = hits.some((hit) => Object.keys(hit.ranks).length > 1);
  const cards = hits.map((hit, position) => {
    const c = card(hit);
    const meta = document.createElement("div");
    meta.className = "meta";
    const score = document.createElement("span");
    score.className = "score";
    const shown = headline(hit, merged);
    score.textContent = shown.text;
    score.title = shown.title;
    if (merged) score.dataset.kind = "best-list";
    c.dataset.position = String(position + 1);
    const id = document.createElement("span");
    id.textContent = `#${hit.id}`;
    meta.append(score, id);
    const ranks = document.createElement("div");
    ranks.className = "ranks";
    for (const [list, rank] of Object.entries(hit.ranks)) {
      const r = document.createElement("span");
      r.className = "rank";
      r.dataset.list = list;
      r.textContent = `${label(list)} #${rank}`;
      ranks.append(r);
    }
    c.append(meta, ranks);
    return c;
  });
  $("results").replaceChildren(...cards);
}

// No query yet: the stored images, a page at a time; clicking one searches for more like it.
async function browse(after = 0) {
  if (after === 0) {
    current = null;
    $("query-view").replaceChildren();
    $("results").replaceChildren();
  }
  $("more")?.remove();
  try {
    // one more than a page: "show more" only when something is left to show
    const doc = await getJson(`/browse?after=${after}&limit=${BROWSE_PAGE + 1}`);
    const items = doc.items.slice(0, BROWSE_PAGE);
    const cards = items.map((item) => card({ ...item, modality: "image" }));
    for (const c of cards) c.classList.add("browse");
    $("results").append(...cards);
    setStatus(`${summary} · browsing: click a photo for more like it, or describe what you are looking for`);
    if (doc.items.length > BROWSE_PAGE) {
      const more = document.createElement("button");
      more.id = "more";
      more.textContent = "show more";
      more.addEventListener("click", () => browse(items[items.length - 1].id));
      $("results").after(more);
    }
  } catch (err) {
    setStatus(err.message, true);
  }
}

// A value from the address the page does not offer (a mistyped mode, texts on an index with none) falls
// back to the default, and the note says which value was not used and what is searched instead.
function fromAddress() {
  const params = new URLSearchParams(location.search);
  const notes = [];
  for (const key of ["mode", "target", "k"]) {
    if (!params.has(key)) continue;
    const wanted = params.get(key);
    const offered = key === "k" || [...$(key).options].some((o) => o.value === wanted && !o.disabled);
    if (offered) {
      $(key).value = wanted;
    } else {
      $(key).value = key === "mode" ? "auto" : "images";
      const instead = $(key).selectedOptions[0]?.textContent || $(key).value;
      const why = key === "target" && wanted === "texts" ? " (this index holds no texts)" : "";
      notes.push(`${key} '${wanted}' is not offered here${why}: searching with ${instead}`);
    }
  }
  showNotes(notes);
  if (params.get("q")) {
    $("q").value = params.get("q");
    run({ kind: "text", value: params.get("q") }, { record: false });
  } else if (params.get("item")) {
    const id = Number(params.get("item"));
    getJson(`/items/${id}`)
      .then((item) => run({ kind: "item", value: id, modality: item.modality }, { record: false }))
      .catch((err) => setStatus(err.message, true));
  } else {
    browse();
  }
}

function searchPhoto(file) {
  if (!file) return;
  $("q").value = "";
  run({ kind: "photo", value: file });
}

function showNotes(extra = []) {
  const lines = [...extra, ...(page && page.model_note ? [page.model_note] : [])];
  $("note").textContent = lines.join(" · ");
  $("note").hidden = lines.length === 0;
}

function offerTargets() {
  // texts are offered only when the index holds some
  const texts = [...$("target").options].find((o) => o.value === "texts");
  if (!counts.text) texts.remove();
}

function offerModes() {
  for (const choice of page.mode_choices) {
    const text = choice.name === "auto"
      ? `${choice.label}: ${label(page.auto_serves.image)}${page.tuned ? " (tuned)" : ""}`
      : choice.label;
    const option = new Option(text, choice.name);
    option.title = choice.help;
    $("mode").append(option);
  }
  $("mode").value = "auto"; // what `cgx query --cross` serves
  const explain = () => { $("mode").title = $("mode").selectedOptions[0]?.title || ""; };
  $("mode").addEventListener("change", explain);
  explain();
}

async function start() {
  try {
    const info = await getJson("/info");
    page = info.page;
    offerModes();
    $("k").max = String(info.limits.max_k);
    counts = { image: info.counts.image || 0, text: info.counts.text || 0 };
    offerTargets();
    summary = `${counts.image} images, ${counts.text} texts · model ${info.model}`;
    setStatus(summary);
    showNotes();
  } catch (err) {
    setStatus(`cannot reach the server: ${err.message}`, true);
    return;
  }
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("q").value.trim();
    if (text) run({ kind: "text", value: text });
    else if (current) run(current);
    else browse();
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
