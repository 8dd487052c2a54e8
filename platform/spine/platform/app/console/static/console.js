// The console's shared helpers: the signed-in key, calls to the JSON API, DOM building.
// The key lives in this tab's sessionStorage and goes out only as an Authorization header.
// Everything from the API is written as text (textContent), never parsed as HTML.
"use strict";

const Spine = (() => {
  const KEY = "spine.key";
  const SESSION = "spine.session";

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function key() {
    return sessionStorage.getItem(KEY);
  }

  function signOut() {
    sessionStorage.removeItem(KEY);
    sessionStorage.removeItem(SESSION);
    location.assign("/ui/");
  }

  function requireKey() {
    if (!key()) {
      const next = location.pathname + location.search + location.hash;
      location.replace("/ui/?next=" + encodeURIComponent(next));
      return false;
    }
    return true;
  }

  function query(params) {
    const search = new URLSearchParams();
    for (const [name, value] of Object.entries(params || {})) {
      if (value === undefined || value === null || value === "") continue;
      for (const item of Array.isArray(value) ? value : [value]) search.append(name, item);
    }
    const text = search.toString();
    return text ? "?" + text : "";
  }

  async function api(path, { method = "GET", params, body, token } = {}) {
    const headers = { Authorization: "Bearer " + (token || key() || "") };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path + query(params), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
    });
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const message = (data && data.error && data.error.message) || response.statusText;
      if (response.status === 401 && !token) {
        signOut();
      }
      throw new ApiError(response.status, message);
    }
    return data;
  }

  // Server-sent events over fetch: EventSource cannot send an Authorization header.
  async function follow(path, onEvent, { signal } = {}) {
    const response = await fetch(path, {
      headers: { Authorization: "Bearer " + key(), Accept: "text/event-stream" },
      credentials: "omit",
      cache: "no-store",
      signal,
    });
    if (!response.ok || !response.body) throw new ApiError(response.status, "cannot follow " + path);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = block
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).trimStart())
          .join("\n");
        if (data) onEvent(JSON.parse(data));
      }
    }
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "text") node.textContent = value;
      else if (name === "class") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function row(...cells) {
    return el("tr", null, ...cells.map((cell) => el("td", null, cell)));
  }

  function emptyRow(tbody, columns, text) {
    tbody.replaceChildren(el("tr", null, el("td", { colspan: columns, class: "muted", text })));
  }

  function time(iso) {
    if (!iso) return "";
    const moment = new Date(iso);
    if (Number.isNaN(moment.getTime())) return String(iso);
    return moment.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  function badge(state) {
    return el("span", { class: "badge badge-" + String(state).replace(/[^a-z_]/g, ""), text: state });
  }

  // The status bar's id is the console's own: a page's form may name a field "status".
  function status(message, { error = false } = {}) {
    const node = document.getElementById("console-status");
    if (!node) return;
    node.textContent = message || "";
    node.classList.toggle("error", error);
  }

  function report(error) {
    status(error instanceof ApiError ? `${error.message} (HTTP ${error.status})` : String(error), {
      error: true,
    });
  }

  async function session() {
    const cached = sessionStorage.getItem(SESSION);
    if (cached) return JSON.parse(cached);
    const found = await api("/ui/api/session");
    sessionStorage.setItem(SESSION, JSON.stringify(found));
    return found;
  }

  async function start(main) {
    if (!requireKey()) return;
    const out = document.getElementById("sign-out");
    if (out) out.addEventListener("click", signOut);
    try {
      const who = await session();
      const label = document.getElementById("who");
      if (label) label.textContent = `${who.tenant} · ${who.role}`;
      await main(who);
    } catch (error) {
      report(error);
    }
  }

  return { ApiError, api, badge, el, emptyRow, follow, key, report, row, session, signOut, start, status, time, KEY };
})();
