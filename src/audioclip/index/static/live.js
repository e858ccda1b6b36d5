// audioclip search page: the live timeline of `audioclip serve --listen SOURCE`.
// The scores of the last SPAN seconds, one lane per label, with the events marked; drawn in SVG from the
// server-sent events of /api/live. Without --listen ("live": false in /api/stats) nothing is asked or shown.
"use strict";

(() => {
  const SPAN = 30; // seconds of the timeline
  const LANE = 34; // px per label
  const LEFT = 130; // px for the labels' names
  const WIDTH = 900;
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = ["#2f6fde", "#1f8a70", "#b4622d", "#7a4fc1", "#c23b5a", "#5b6b2a", "#0f7c99", "#8a5a00"];

  let labels = [];
  let frames = []; // {start_s, end_s, scores}
  let events = new Map(); // label + start -> {label, start_s, end_s, score, open}
  let lastId = 0;
  let counts = { frames: 0, events: 0, dropped: 0 };
  let drawPending = false;
  let section = null;
  let svg = null;
  let statusLine = null;
  let list = null;
  let hello = null;

  function node(tag, attrs, parent) {
    const n = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, String(v));
    if (parent) parent.appendChild(n);
    return n;
  }

  function build(info) {
    if (section) return;
    section = document.createElement("section");
    section.id = "live";
    section.style.margin = "0 0 18px";
    const title = document.createElement("h2");
    title.textContent = `Listening to ${info.source || "a source"}`;
    title.style.fontSize = "17px";
    title.style.margin = "0 0 4px";
    statusLine = document.createElement("p");
    statusLine.id = "live-status";
    statusLine.className = "muted";
    svg = node("svg", { id: "live-timeline", role: "img", "aria-label": "live scores and events",
                        preserveAspectRatio: "none" });
    svg.style.width = "100%";
    svg.style.display = "block";
    svg.style.background = "#fff";
    svg.style.border = "1px solid #e3e7eb";
    svg.style.borderRadius = "8px";
    list = document.createElement("ol");
    list.id = "live-events";
    list.className = "muted";
    list.style.margin = "6px 0 0";
    list.style.paddingLeft = "18px";
    section.append(title, statusLine, svg, list);
    const main = document.querySelector("main") || document.body;
    main.prepend(section);
  }

  function laneOf(label) {
    let i = labels.indexOf(label);
    if (i < 0) { labels.push(label); i = labels.length - 1; }
    return i;
  }

  function now() {
    return frames.length ? frames[frames.length - 1].end_s : 0;
  }

  function schedule() {
    if (drawPending) return;
    drawPending = true;
    requestAnimationFrame(() => { drawPending = false; draw(); });
  }

  function draw() {
    const end = Math.max(now(), SPAN);
    const begin = end - SPAN;
    const x = (t) => LEFT + (WIDTH - LEFT) * (t - begin) / SPAN;
    const height = Math.max(1, labels.length) * LANE + 20;
    svg.setAttribute("viewBox", `0 0 ${WIDTH} ${height}`);
    svg.style.height = `${height}px`;
    svg.dataset.frames = String(counts.frames);
    svg.dataset.events = String(counts.events);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    // time marks every 5 s
    for (let t = Math.ceil(begin / 5) * 5; t <= end; t += 5) {
      node("line", { x1: x(t), x2: x(t), y1: 0, y2: height - 16, stroke: "#e3e7eb" }, svg);
      node("text", { x: x(t), y: height - 4, "font-size": 11, fill: "#68737d",
                      "text-anchor": x(t) > WIDTH - 20 ? "end" : "middle" }, svg)
        .textContent = `${t.toFixed(0)} s`;
    }
    labels.forEach((label, i) => {
      const top = i * LANE;
      const color = COLORS[i % COLORS.length];
      node("text", { x: 6, y: top + LANE / 2 + 4, "font-size": 13, fill: "#1d2329" }, svg).textContent =
        label.length > 18 ? `${label.slice(0, 17)}…` : label;
      node("line", { x1: LEFT, x2: WIDTH, y1: top + LANE - 2, y2: top + LANE - 2, stroke: "#eef0f3" }, svg);
      for (const ev of events.values()) {
        if (ev.label !== label || (ev.open ? end : ev.end_s) < begin) continue;
        const from = Math.max(begin, ev.start_s);
        const to = ev.open ? end : ev.end_s;
        const mark = node("rect", { class: "live-event", x: x(from), y: top + 2, width: Math.max(2, x(to) - x(from)),
                                    height: LANE - 6, fill: color, "fill-opacity": 0.18, stroke: color, rx: 3 }, svg);
        node("title", {}, mark).textContent = `${label}: ${ev.start_s.toFixed(1)}–${ev.open ? "…" : ev.end_s.toFixed(1)} s` +
          (ev.score !== undefined ? `, score ${ev.score.toFixed(2)}` : "");
      }
      const points = frames.filter((f) => f.end_s >= begin && label in f.scores)
        .map((f) => `${x((f.start_s + f.end_s) / 2).toFixed(1)},${(top + LANE - 4 - (LANE - 8) * f.scores[label]).toFixed(1)}`);
      if (points.length) node("polyline", { class: "live-scores", points: points.join(" "), fill: "none",
                                            stroke: color, "stroke-width": 1.8 }, svg);
    });
    const state = counts.state ? ` · ${counts.state}` : "";
    statusLine.textContent = `${now().toFixed(1)} s heard · ${counts.frames} window(s) · ${counts.events} event(s)` +
      (counts.dropped ? ` · ${counts.dropped} window(s) dropped` : "") + state;
  }

  function fresh(message) {
    // After a reconnection the server sends its recent messages again: skip those already shown.
    const id = Number(message.lastEventId || 0);
    if (id && id <= lastId) return false;
    if (id) lastId = id;
    return true;
  }

  function onFrame(message) {
    if (!fresh(message)) return;
    const f = JSON.parse(message.data);
    for (const label of Object.keys(f.scores)) laneOf(label);
    frames.push(f);
    counts.frames += 1;
    counts.dropped = Math.max(counts.dropped, f.dropped || 0);
    const begin = f.end_s - SPAN - 5;
    while (frames.length && frames[0].end_s < begin) frames.shift();
    schedule();
  }

  function onEvent(message) {
    if (!fresh(message)) return;
    const ev = JSON.parse(message.data);
    laneOf(ev.label);
    const key = `${ev.label}\u0000${ev.start_s}`;
    const open = ev.event === "onset";
    events.set(key, { label: ev.label, start_s: ev.start_s, end_s: ev.end_s, score: ev.score, open });
    if (!open) {
      counts.events += 1;
      const item = document.createElement("li");
      item.textContent = `${ev.label}: ${ev.start_s.toFixed(1)}–${ev.end_s.toFixed(1)} s (${ev.start}), ` +
        `score ${Number(ev.score).toFixed(2)}`;
      list.prepend(item);
      while (list.children.length > 8) list.removeChild(list.lastChild);
    }
    const oldest = now() - SPAN - 5;
    for (const [k, e] of events) if (!e.open && e.end_s < oldest) events.delete(k);
    schedule();
  }

  function onStatus(message) {
    if (!fresh(message)) return;
    const s = JSON.parse(message.data);
    if (s.state === "ended") counts.state = "the source ended";
    else if (s.state === "error") counts.state = `stopped: ${s.message}`;
    else if (s.state === "behind") counts.state = "inference is behind: windows dropped";
    if (s.dropped !== undefined) counts.dropped = Math.max(counts.dropped, s.dropped);
    schedule();
  }

  async function start() {
    if (typeof EventSource === "undefined") return;
    try { // only a server started with --listen has a feed (/api/stats says so): no request for nothing
      if (!(await (await fetch("/api/stats")).json()).live) return;
    } catch (err) {
      return;
    }
    const source = new EventSource("/api/live");
    source.addEventListener("hello", (message) => {
      hello = JSON.parse(message.data);
      build(hello);
      for (const label of hello.labels || []) laneOf(label);
      schedule();
    });
    source.addEventListener("frame", onFrame);
    source.addEventListener("event", onEvent);
    source.addEventListener("status", onStatus);
    source.addEventListener("dropped", (message) => {
      // this page read too slowly and missed messages (the listener did not wait for it)
      const d = JSON.parse(message.data);
      counts.state = `this page missed ${d.dropped} message(s)`;
      schedule();
    });
    source.onerror = () => {
      // 404 (no --listen): closed for good, nothing shown; otherwise the browser reconnects by itself
      if (source.readyState === EventSource.CLOSED) return;
      if (statusLine) statusLine.textContent = "reconnecting…";
    };
  }

  start();
})();
