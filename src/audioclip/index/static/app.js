// audioclip search page. Results are built with DOM calls (textContent), never from HTML strings.
"use strict";

const $ = (id) => document.getElementById(id);
const statusLine = $("status");
const list = $("results");
let maxUpload = 0;
let currentText = ""; // the text query of the results shown ("" after an upload): what a timeline scores
let timelineThreshold = null; // ?threshold= of the page's address, passed on to /api/timeline
let uploaded = null; // the recording last searched with (a File), which its timeline is drawn over
const SVG = "http://www.w3.org/2000/svg";

function clock(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const m = Math.floor(seconds / 60);
  const s = seconds - 60 * m;
  return `${m}:${s < 10 ? "0" : ""}${s.toFixed(1)}`;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function player(hit) {
  const tag = hit.source === "video" ? "video" : "audio";
  const media = el(tag, "player");
  media.controls = true;
  media.preload = "metadata";
  const start = hit.start || 0;
  // Media fragment: the player starts at the matching time (and stops at its end).
  media.src = hit.start !== null ? `${hit.media}#t=${start.toFixed(2)},${hit.end.toFixed(2)}` : hit.media;
  media.addEventListener("loadedmetadata", () => {
    if (start && Math.abs(media.currentTime - start) > 0.5) media.currentTime = start;
  }, { once: true });
  return media;
}

function waveform(hit, media) {
  // The recording's waveform (drawn once by the server, cached); the matching window marked over it.
  // A click plays from there; a click on the marked window plays it from its start.
  const box = el("div", "wave");
  box.title = "click to play from there";
  const img = el("img", "wave-img");
  img.src = hit.wave;
  img.alt = `waveform of ${hit.name}`;
  img.loading = "lazy";
  img.addEventListener("error", () => box.remove(), { once: true });
  box.appendChild(img);
  if (hit.start !== null && hit.duration) {
    const mark = el("div", "mark");
    mark.style.left = `${(100 * hit.start / hit.duration).toFixed(2)}%`;
    mark.style.width = `${Math.max(0.8, 100 * (hit.end - hit.start) / hit.duration).toFixed(2)}%`;
    mark.title = `the matching window, ${clock(hit.start)} \u2013 ${clock(hit.end)}`;
    box.appendChild(mark);
  }
  box.addEventListener("click", (event) => {
    const rect = box.getBoundingClientRect();
    const inMark = event.target.classList.contains("mark");
    const at = inMark ? hit.start : hit.duration * Math.min(1, Math.max(0, (event.clientX - rect.left) / rect.width));
    media.currentTime = at;
    media.play().catch(() => {});
  });
  return box;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

function drawTimeline(box, answer, media) {
  // The text's score over time, the events shaded, the threshold dashed. The height spans the scores and the
  // threshold (cosines differ by little: on a 0-1 scale the curve would look flat). A click plays from there.
  const duration = answer.duration || 1;
  // A loop, not Math.min(...answer.score): a long recording has more scores than a call may have arguments.
  let low = answer.threshold;
  let high = answer.threshold;
  for (const score of answer.score) {
    if (score < low) low = score;
    if (score > high) high = score;
  }
  const pad = Math.max(1e-3, 0.08 * (high - low));
  const x = (t) => (1000 * t / duration).toFixed(1);
  const y = (score) => (100 * (high + pad - score) / (high - low + 2 * pad)).toFixed(1);
  const svg = svgEl("svg", { class: "timeline-plot", viewBox: "0 0 1000 100", preserveAspectRatio: "none",
    role: "img", "aria-label": `score of \u201C${answer.query}\u201D over time` });
  for (const event of answer.events) {
    const rect = svgEl("rect", { class: "event", x: x(event.start), y: 0, height: 100,
      width: Math.max(2, 1000 * (event.end - event.start) / duration).toFixed(1) });
    const title = svgEl("title", {});
    title.textContent = `${clock(event.start)} \u2013 ${clock(event.end)} \u00B7 peak ${event.score.toFixed(3)}`;
    rect.appendChild(title);
    svg.appendChild(rect);
  }
  svg.appendChild(svgEl("line", { class: "threshold", x1: 0, x2: 1000, y1: y(answer.threshold), y2: y(answer.threshold) }));
  const points = answer.score.map((score, i) => `${x((answer.start[i] + answer.end[i]) / 2)},${y(score)}`);
  svg.appendChild(svgEl("polyline", { class: "curve", points: points.join(" ") }));
  svg.addEventListener("click", (event) => {
    const rect = svg.getBoundingClientRect();
    media.currentTime = duration * Math.min(1, Math.max(0, (event.clientX - rect.left) / rect.width));
    media.play().catch(() => {});
  });
  const n = answer.events.length;
  box.replaceChildren(svg, el("div", "timeline-note",
    `${n} event${n === 1 ? "" : "s"} above ${answer.threshold} (scores ${low.toFixed(3)}\u2013${high.toFixed(3)})`
    + " \u00b7 click to play from there"));
}

async function loadTimeline(box, request, media, current = () => true) {
  // Draw the timeline the server answers to ``request`` (a promise of the response) into ``box``, or its error;
  // nothing once ``current()`` is false (the page has moved on). Resolves to whether it was drawn.
  box.hidden = false;
  box.replaceChildren(el("div", "timeline-note", "drawing the timeline\u2026"));
  try {
    const answer = await answerOf(await request);
    if (current()) drawTimeline(box, answer, media);
    return true;
  } catch (err) {
    if (current()) box.replaceChildren(el("div", "timeline-note error", err.message));
    return false;
  }
}

function postFile(address, file) {
  // an uploaded file as the request body; the header is what a page of another site cannot send unasked
  return fetch(address, {
    method: "POST", body: file, headers: { "X-Audioclip": "1", "Content-Type": "application/octet-stream" },
  });
}

function timelineParams(text, more = {}) {
  const params = new URLSearchParams({ q: text, ...more });
  if (timelineThreshold !== null) params.set("threshold", timelineThreshold);
  return params;
}

function timelineButton(hit, media, box) {
  const button = el("button", "timeline-button", "timeline");
  button.type = "button";
  button.title = `the score of \u201C${currentText}\u201D over the whole recording`;
  const text = currentText;
  button.addEventListener("click", async () => {
    button.disabled = true;
    // the address the server gave (ids are 64-bit: a JavaScript number would round them)
    if (!(await loadTimeline(box, fetch(`${hit.timeline}&${timelineParams(text)}`), media))) button.disabled = false;
  });
  return button;
}

function showUpload(file) {
  // The recording searched with, above its results: played from this page's own copy (an object URL, nothing
  // fetched), and a text's score over it on demand (POST /api/timeline: the server keeps nothing of it).
  const media = $("upload-player");
  if (media.src) URL.revokeObjectURL(media.src);
  uploaded = file;
  media.src = URL.createObjectURL(file);
  $("upload-name").textContent = file.name;
  $("upload-q").value = $("q").value.trim();
  $("upload-timeline").hidden = true;
  $("upload-timeline").replaceChildren();
  $("upload-view").hidden = false;
}

function hideUpload() {
  const media = $("upload-player");
  media.pause();
  if (media.src) URL.revokeObjectURL(media.src);
  media.removeAttribute("src");
  media.load(); // lets go of the file's data
  uploaded = null;
  $("upload-view").hidden = true;
  $("upload-timeline-go").disabled = false;
}

async function uploadTimeline(event) {
  event.preventDefault();
  const text = $("upload-q").value.trim();
  const box = $("upload-timeline");
  if (!text || !uploaded) return;
  const button = $("upload-timeline-go");
  button.disabled = true;
  const file = uploaded; // an answer that comes after another file was picked is not drawn
  const params = timelineParams(text, { name: file.name });
  await loadTimeline(box, postFile(`/api/timeline?${params}`, file), $("upload-player"), () => uploaded === file);
  if (uploaded === file) button.disabled = false;
}

function card(hit, best) {
  const item = el("li", `hit ${hit.source}`);
  item.dataset.id = hit.id;
  item.appendChild(el("div", "rank", String(hit.rank)));

  const visual = el("div", "visual");
  if (hit.thumb) {
    const link = el("a");
    link.href = hit.media;
    link.target = "_blank";
    link.rel = "noopener";
    const img = el("img", "thumb");
    img.src = hit.thumb;
    img.alt = hit.name;
    img.loading = "lazy";
    link.appendChild(img);
    visual.appendChild(link);
  } else {
    visual.appendChild(el("div", `icon ${hit.source}`, hit.source === "video" ? "\u25B6" : "\u266A"));
  }
  item.appendChild(visual);

  const info = el("div", "info");
  info.appendChild(el("div", "name", hit.name));
  const where = el("div", "path", hit.path.length > 96 ? `\u2026${hit.path.slice(-95)}` : hit.path);
  where.title = hit.path;
  info.appendChild(where);
  const meta = el("div", "meta");
  meta.appendChild(el("span", `badge ${hit.source}`, hit.source));
  if (hit.start !== null) {
    const whole = hit.start < 0.05 && hit.duration && hit.end > hit.duration - 0.05;
    const span = `${clock(hit.start)} \u2013 ${clock(hit.end)}`;
    const of = hit.duration ? ` of ${clock(hit.duration)}` : "";
    const merged = hit.windows > 1 ? ` \u00b7 ${hit.windows} windows` : "";
    const text = whole ? `matches the whole recording (${clock(hit.duration)})` : `matches ${span}${of}${merged}`;
    meta.appendChild(el("span", "range", text));
  } else if (hit.source === "video") {
    meta.appendChild(el("span", "range", "matches its picture"));
  }
  info.appendChild(meta);
  if (hit.source !== "image") {
    const media = player(hit);
    if (hit.wave) info.appendChild(waveform(hit, media));
    info.appendChild(media);
    if (currentText && hit.timeline) { // a timeline of the text query over this recording, on demand
      const box = el("div", "timeline");
      box.hidden = true;
      meta.appendChild(timelineButton(hit, media, box));
      info.appendChild(box);
    }
  }
  item.appendChild(info);

  const score = el("div", "score");
  score.title = "cosine similarity";
  score.appendChild(el("span", "value", hit.score.toFixed(3)));
  const bar = el("div", "bar");
  const fill = el("div", "fill");
  // relative to the best result: the ranking at a glance (cosines of real matches are small, ~0.2-0.35)
  const share = best > 0 ? Math.max(0, hit.score) / best : 0;
  fill.style.width = `${Math.max(3, Math.min(100, 100 * share)).toFixed(1)}%`;
  bar.appendChild(fill);
  score.appendChild(bar);
  item.appendChild(score);
  return item;
}

let best = 0;
let nextPage = null; // (offset) => Promise of the next page's answer, for "More results"

function show(answer, label, fetchPage) {
  const moreButton = $("more");
  if (!answer.offset) {
    best = answer.results.reduce((most, hit) => Math.max(most, hit.score), 0);
    list.replaceChildren();
  }
  const cards = document.createDocumentFragment(); // not append(...cards): no argument per result
  for (const hit of answer.results) cards.appendChild(card(hit, best));
  list.appendChild(cards);
  nextPage = answer.more ? fetchPage : null;
  moreButton.hidden = !nextPage;
  if (answer.empty_index) {
    statusLine.textContent = "The index is empty: add files with \u2018audioclip index FOLDER --db \u2026\u2019.";
  } else if (!list.children.length) {
    statusLine.textContent = `No files of that kind for ${label}.`;
  } else {
    statusLine.textContent = `${list.children.length} result(s) for ${label} \u00b7 ${answer.took_ms} ms`;
  }
  document.body.dataset.state = "done";
}

async function more() {
  if (!nextPage) return;
  const fetchPage = nextPage;
  const label = statusLine.textContent.replace(/^\d+ result\(s\) for /, "").replace(/ \u00b7 .*$/, "");
  document.body.dataset.state = "busy";
  try {
    show(await fetchPage(list.children.length), label, fetchPage);
  } catch (err) {
    failed(err.message);
  }
}

function failed(message) {
  list.replaceChildren();
  $("more").hidden = true;
  statusLine.textContent = message;
  statusLine.classList.add("error");
  document.body.dataset.state = "error";
}

async function answerOf(response) {
  let answer;
  try {
    answer = await response.json();
  } catch (err) {
    throw new Error(`the server answered ${response.status}`);
  }
  if (!response.ok) throw new Error(answer.error || `the server answered ${response.status}`);
  return answer;
}

function options() {
  const params = new URLSearchParams({ k: $("k").value });
  if ($("modality").value) params.set("modality", $("modality").value);
  if ($("label").value) params.set("label", $("label").value);
  return params;
}

function busy(label) {
  statusLine.classList.remove("error");
  statusLine.textContent = `Searching for ${label}\u2026`;
  document.body.dataset.state = "busy";
}

async function searchText(event) {
  event.preventDefault();
  const text = $("q").value.trim();
  if (!text) return;
  const label = `\u201c${text}\u201d${$("label").value ? ` labelled ${$("label").value}` : ""}`;
  currentText = text;
  hideUpload();
  busy(label);
  const params = options();
  params.set("q", text);
  history.replaceState(null, "", `?${params}`);
  const fetchPage = async (offset) => {
    const page = new URLSearchParams(params);
    if (offset) page.set("offset", String(offset));
    return answerOf(await fetch(`/api/search?${page}`));
  };
  try {
    show(await fetchPage(0), label, fetchPage);
  } catch (err) {
    failed(err.message);
  }
}

async function searchFile(kind, input) {
  const file = input.files[0];
  if (!file) return;
  const label = `the ${kind === "audio" ? "sound" : "picture"} \u201c${file.name}\u201d`;
  if (maxUpload && file.size > maxUpload) {
    hideUpload();
    failed(`${file.name} is too large (${(file.size / 1e6).toFixed(1)} MB; at most ${(maxUpload / 1e6).toFixed(1)} MB)`);
    input.value = "";
    return;
  }
  currentText = "";
  if (kind === "audio") showUpload(file);
  else hideUpload();
  busy(label);
  const params = options();
  params.set("kind", kind);
  params.set("name", file.name);
  const fetchPage = async (offset) => {
    const page = new URLSearchParams(params);
    if (offset) page.set("offset", String(offset));
    return answerOf(await postFile(`/api/search?${page}`, file));
  };
  try {
    show(await fetchPage(0), label, fetchPage);
  } catch (err) {
    if (uploaded === file) hideUpload(); // a file the server cannot search with has no timeline either
    failed(err.message);
  } finally {
    input.value = "";
  }
}

async function stats() {
  try {
    const s = await (await fetch("/api/stats")).json();
    maxUpload = s.max_upload || 0;
    const parts = Object.entries(s.by_source).map(([kind, n]) => `${n} ${kind}`);
    $("stats").textContent = `${s.files} files indexed${parts.length ? ` (${parts.join(", ")})` : ""}`;
  } catch (err) {
    $("stats").textContent = "";
  }
}

async function labels() {
  // the labels of the server's head (serve --head), for the label filter; none: the select stays hidden
  try {
    const answer = await (await fetch("/api/labels")).json();
    for (const name of answer.labels || []) $("label").add(new Option(name, name));
    $("label").hidden = !(answer.labels || []).length;
  } catch (err) {
    $("label").hidden = true;
  }
}

$("search-form").addEventListener("submit", searchText);
$("more").addEventListener("click", more);
$("upload-timeline-form").addEventListener("submit", uploadTimeline);
$("audio-file").addEventListener("change", () => searchFile("audio", $("audio-file")));
$("image-file").addEventListener("change", () => searchFile("image", $("image-file")));
stats();
const initial = new URLSearchParams(location.search);
const ready = labels();
if (initial.get("threshold")) timelineThreshold = initial.get("threshold");
if (initial.get("q")) {
  $("q").value = initial.get("q");
  if (initial.get("modality")) $("modality").value = initial.get("modality");
  const k = Number(initial.get("k"));
  if (Number.isInteger(k) && k >= 1 && k <= 100) {
    if (![...$("k").options].some((o) => o.value === String(k))) $("k").add(new Option(String(k)));
    $("k").value = String(k);
  }
  ready.then(() => {
    if (initial.get("label")) $("label").value = initial.get("label");
    $("search-form").requestSubmit();
  });
}
