/* The mail catcher's page: inbox, live updates, search, message view.
 *
 * Everything a captured message carries is untrusted.  It reaches the
 * document only as text (textContent, or attribute values such as a
 * download name) and through the HTML tab's <iframe sandbox="">, whose
 * document the server serves under its own CSP (no scripts, no remote
 * loads).  This file never assigns innerHTML/outerHTML and never calls
 * document.write or eval; tests/test_catcher_browser.py checks both.
 *
 * Writes go through fetch with Content-Type: application/json: the server
 * refuses other writes (its CSRF check).  The contract is docs/catcher.md.
 */
"use strict";

(function () {
  const PAGE_SIZE = 50;
  const TITLE = "Inbox · Mail catcher";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const PAPERCLIP = "M20 11.5l-7.8 7.8a5 5 0 0 1-7.1-7.1l8.5-8.5a3.3 3.3 0 0 1 4.7 4.7l-8.5 8.5a1.7 1.7 0 0 1-2.4-2.4l7.8-7.8";

  const state = {
    start: 0,
    query: "",
    listSeq: 0,
    refreshTimer: null,
    openId: null,
    detail: null,
    tab: "html",
    remote: false,
    tabCache: {},
    release: false,
    smtp: "",
  };

  const $ = (id) => document.getElementById(id);

  /* ---------- small DOM and format helpers ---------- */

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svgIcon(pathData, className, label) {
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("class", className);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
    const title = document.createElementNS(SVG_NS, "title");
    title.textContent = label;
    const path = document.createElementNS(SVG_NS, "path");
    path.setAttribute("d", pathData);
    svg.append(title, path);
    return svg;
  }

  function addrText(addr) {
    if (!addr) return "";
    if (addr.Name && addr.Address) return addr.Name + " <" + addr.Address + ">";
    return addr.Name || addr.Address || "";
  }

  function addrShort(addr) {
    if (!addr) return "";
    return addr.Name || addr.Address || "";
  }

  function addrList(list) {
    return (list || []).map(addrText).join(", ");
  }

  function humanSize(bytes) {
    const n = Number(bytes) || 0;
    if (n < 1024) return n + " B";
    if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " kB";
    return (n / (1024 * 1024)).toFixed(1) + " MB";
  }

  function shortDate(text) {
    const date = new Date(text);
    if (isNaN(date.getTime())) return text || "";
    const now = new Date();
    if (date.toDateString() === now.toDateString()) {
      return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    }
    const options = { day: "numeric", month: "short" };
    if (date.getFullYear() !== now.getFullYear()) options.year = "numeric";
    return date.toLocaleDateString([], options);
  }

  function longDate(text) {
    const date = new Date(text);
    return isNaN(date.getTime()) ? (text || "") : date.toLocaleString();
  }

  function messagePath(id, suffix) {
    return "/api/v1/message/" + encodeURIComponent(id) + (suffix || "");
  }

  /* ---------- HTTP ---------- */

  async function request(method, path, body) {
    const options = { method: method, headers: {}, credentials: "same-origin" };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    // Every URL is made from location.origin, never relative to the
    // document: a page opened as http://user:password@host/ would resolve
    // relative paths to URLs with credentials, which fetch() refuses and
    // Chromium blocks for frames.
    const response = await fetch(location.origin + path, options);
    if (!response.ok) {
      let reason = response.status + " " + response.statusText;
      try {
        const data = await response.json();
        if (data && data.Error) reason = data.Error;
      } catch (ignored) { /* not JSON: keep the status line */ }
      const error = new Error(reason);
      error.status = response.status;
      throw error;
    }
    return response;
  }

  async function getJSON(path) {
    return (await request("GET", path)).json();
  }

  function showNotice(text, kind) {
    const notice = $("notice");
    notice.textContent = text;
    notice.className = "notice" + (kind ? " " + kind : "");
    notice.hidden = !text;
  }

  function reportError(what, error) {
    showNotice(what + ": " + error.message, "error");
  }

  /* ---------- the inbox ---------- */

  async function loadList() {
    const seq = ++state.listSeq;
    const params = new URLSearchParams({ start: String(state.start), limit: String(PAGE_SIZE) });
    let path = "/api/v1/messages";
    const query = state.query.trim();
    if (query) {
      params.set("query", query);
      path = "/api/v1/search";
    }
    let data;
    try {
      data = await getJSON(path + "?" + params.toString());
    } catch (error) {
      if (seq === state.listSeq) reportError("Could not load the messages", error);
      return;
    }
    if (seq !== state.listSeq) return;
    if (data.messages.length === 0 && state.start > 0 && data.total > 0) {
      state.start = Math.max(0, Math.floor((data.total - 1) / PAGE_SIZE) * PAGE_SIZE);
      loadList();
      return;
    }
    renderList(data, query);
  }

  function scheduleRefresh() {
    if (state.refreshTimer !== null) return;
    state.refreshTimer = setTimeout(function () {
      state.refreshTimer = null;
      loadList();
    }, 150);
  }

  function renderList(data, query) {
    const list = $("messages");
    list.replaceChildren(...data.messages.map(messageRow));
    $("list-empty").hidden = data.messages.length > 0;
    $("list-empty").textContent = emptyText(query);
    const unread = Number(data.unread) || 0;
    document.title = unread > 0 ? "(" + unread + ") " + TITLE : TITLE;
    const total = Number(data.total) || 0;
    const noun = total === 1 ? " message" : " messages";
    $("count").textContent = query
      ? total + noun + " match"
      : total + noun + (unread ? ", " + unread + " unread" : "");
    const first = data.messages.length ? state.start + 1 : 0;
    $("page-info").textContent = first + "–" + (state.start + data.messages.length) + " of " + total;
    $("newer").disabled = state.start === 0;
    $("older").disabled = state.start + data.messages.length >= total;
    renderDropped(data);
  }

  function emptyText(query) {
    if (query) return "No message matches.";
    return "No messages yet. Send some to " + (state.smtp || "the SMTP port") + ".";
  }

  function renderDropped(data) {
    const dropped = Number(data.dropped) || 0;
    const notice = $("notice");
    if (dropped > 0) {
      const bound = data.max_messages ? " (it keeps the newest " + data.max_messages + ", --max-messages)" : "";
      showNotice(dropped + " older message" + (dropped === 1 ? " was" : "s were") + " dropped by the catcher" + bound + ".", "dropped");
    } else if (notice.classList.contains("dropped")) {
      showNotice("");
    }
  }

  function messageRow(summary) {
    const item = el("li", "msg" + (summary.Read ? "" : " unread"));
    item.dataset.id = summary.ID;
    if (summary.ID === state.openId) item.classList.add("selected");
    const link = el("a", "row");
    link.href = "#" + encodeURIComponent(summary.ID);
    const top = el("div", "line");
    top.append(el("span", "from", addrShort(summary.From) || "(no sender)"), el("time", "date", shortDate(summary.Created)));
    top.lastChild.dateTime = summary.Created || "";
    const middle = el("div", "line");
    middle.append(el("span", "subject", summary.Subject || "(no subject)"));
    const facts = el("span", "facts");
    if (summary.Attachments > 0) {
      facts.append(svgIcon(PAPERCLIP, "clip", summary.Attachments + " attachment" + (summary.Attachments === 1 ? "" : "s")));
    }
    facts.append(el("span", "size", humanSize(summary.Size)));
    middle.append(facts);
    const bottom = el("div", "line muted");
    const to = (summary.To || []).map(addrShort).join(", ");
    bottom.append(el("span", "to", to ? "To " + to : ""), el("span", "snippet", summary.Snippet || ""));
    link.append(top, middle, bottom);
    item.append(link);
    return item;
  }

  /* ---------- one message ---------- */

  function routeFromHash() {
    let id = "";
    try {
      id = decodeURIComponent(location.hash.replace(/^#/, ""));
    } catch (ignored) { /* a malformed #%zz: the inbox */ }
    if (id) openMessage(id);
    else closeMessage();
  }

  function closeMessage() {
    state.openId = null;
    state.detail = null;
    document.body.classList.remove("reading");
    $("message").hidden = true;
    $("message-empty").hidden = false;
    $("tab-panel").replaceChildren();
    for (const row of document.querySelectorAll("#messages .selected")) row.classList.remove("selected");
  }

  async function openMessage(id) {
    state.openId = id;
    state.detail = null;
    state.remote = false;
    state.tabCache = {};
    document.body.classList.add("reading");
    for (const row of document.querySelectorAll("#messages li.msg")) {
      row.classList.toggle("selected", row.dataset.id === id);
    }
    let detail;
    try {
      detail = await getJSON(messagePath(id));
    } catch (error) {
      if (state.openId !== id) return;
      showMissing(error.status === 404 ? "This message is no longer here." : "Could not load it: " + error.message);
      return;
    }
    if (state.openId !== id) return;
    state.detail = detail;
    markRowRead(id);
    renderMessage(detail);
  }

  function showMissing(text) {
    $("message-empty").hidden = true;
    $("message").hidden = false;
    $("msg-subject").textContent = text;
    $("msg-meta").replaceChildren();
    $("tabs").hidden = true;
    $("tab-panel").replaceChildren();
  }

  function markRowRead(id) {
    for (const row of document.querySelectorAll("#messages li.msg.unread")) {
      if (row.dataset.id !== id) continue;
      row.classList.remove("unread");
      scheduleRefresh();  // the unread counts (getting it marked it read)
    }
  }

  function metaRow(list, name, value) {
    if (!value) return;
    list.append(el("dt", "", name), el("dd", "", value));
  }

  function renderMessage(detail) {
    $("message-empty").hidden = true;
    $("message").hidden = false;
    $("tabs").hidden = false;
    $("release").hidden = !state.release;
    $("msg-subject").textContent = detail.Subject || "(no subject)";
    const meta = $("msg-meta");
    meta.replaceChildren();
    metaRow(meta, "From", addrText(detail.From));
    metaRow(meta, "To", addrList(detail.To));
    metaRow(meta, "Cc", addrList(detail.Cc));
    metaRow(meta, "Bcc", addrList(detail.Bcc));
    metaRow(meta, "Reply-To", addrList(detail.ReplyTo));
    metaRow(meta, "Date", longDate(detail.Date));
    metaRow(meta, "Size", humanSize(detail.Size));
    const files = (detail.Attachments || []).length + (detail.Inline || []).length;
    for (const button of document.querySelectorAll("#tabs button")) {
      if (button.dataset.tab === "attachments") button.textContent = "Attachments (" + files + ")";
    }
    showTab(detail.HTML ? "html" : "text");
  }

  function showTab(name) {
    state.tab = name;
    for (const button of document.querySelectorAll("#tabs button")) {
      const on = button.dataset.tab === name;
      button.setAttribute("aria-selected", on ? "true" : "false");
      button.classList.toggle("active", on);
    }
    const panel = $("tab-panel");
    panel.dataset.tab = name;
    const render = TABS[name];
    const id = state.openId;
    panel.replaceChildren(el("p", "empty loading", "Loading…"));
    Promise.resolve(render(state.detail)).then(function (node) {
      if (state.openId === id && state.tab === name) panel.replaceChildren(node);
    }, function (error) {
      if (state.openId === id && state.tab === name) panel.replaceChildren(el("p", "empty error", "Could not load it: " + error.message));
    });
  }

  async function cached(key, load) {
    if (!(key in state.tabCache)) state.tabCache[key] = await load();
    return state.tabCache[key];
  }

  function htmlTab(detail) {
    if (!detail.HTML) return el("p", "empty", "This message has no HTML part.");
    const box = el("div", "html-view");
    const bar = el("div", "remote-bar");
    if (state.remote) {
      bar.append(el("span", "", "Remote content is loaded."));
    } else {
      bar.append(el("span", "", "Remote images and styles are blocked."));
      const button = el("button", "quiet", "Load remote content");
      button.type = "button";
      button.id = "load-remote";
      button.addEventListener("click", function () {
        state.remote = true;
        showTab("html");
      });
      bar.append(button);
    }
    const frame = document.createElement("iframe");
    frame.setAttribute("sandbox", "");
    frame.setAttribute("referrerpolicy", "no-referrer");
    frame.title = "HTML body";
    frame.src = location.origin + "/view/" + encodeURIComponent(detail.ID) + ".html" + (state.remote ? "?remote=1" : "");
    box.append(bar, frame);
    return box;
  }

  function textTab(detail) {
    if (!detail.Text) return el("p", "empty", "This message has no text part.");
    return el("pre", "text-body", detail.Text);
  }

  async function headersTab(detail) {
    const headers = await cached("headers", () => getJSON(messagePath(detail.ID, "/headers")));
    const table = el("table", "headers");
    const body = el("tbody");
    for (const name of Object.keys(headers).sort()) {
      for (const value of headers[name]) {
        const row = el("tr");
        row.append(el("th", "", name), el("td", "", value));
        body.append(row);
      }
    }
    table.append(body);
    return table;
  }

  async function rawTab(detail) {
    const text = await cached("raw", async () => (await request("GET", messagePath(detail.ID, "/raw"))).text());
    const box = el("div", "raw-view");
    const link = el("a", "quiet-link", "Open raw source");
    link.href = location.origin + messagePath(detail.ID, "/raw");
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    box.append(link, el("pre", "raw", text));
    return box;
  }

  function treeNode(part) {
    const item = el("li");
    const label = el("div", "part");
    label.append(el("code", "part-id", part.PartID || "—"), el("span", "ctype", part.ContentType || ""));
    if (part.FileName) label.append(el("span", "fname", part.FileName));
    label.append(el("span", "size", humanSize(part.Size)));
    item.append(label);
    if (part.Children && part.Children.length) {
      const children = el("ul");
      children.append(...part.Children.map(treeNode));
      item.append(children);
    }
    return item;
  }

  async function treeTab(detail) {
    const tree = await cached("tree", () => getJSON(messagePath(detail.ID, "/tree")));
    const list = el("ul", "tree");
    list.append(treeNode(tree));
    return list;
  }

  function attachmentsTab(detail) {
    const parts = (detail.Attachments || []).concat(detail.Inline || []);
    if (!parts.length) return el("p", "empty", "No attachments.");
    const list = el("ul", "attachments");
    for (const part of parts) {
      const item = el("li");
      const link = el("a", "download", part.FileName || "part " + part.PartID);
      link.href = location.origin + messagePath(detail.ID, "/part/" + encodeURIComponent(part.PartID));
      link.setAttribute("download", part.FileName || "part-" + part.PartID);
      link.append(svgIcon(PAPERCLIP, "clip", "attachment"));
      item.append(link, el("span", "muted", (part.ContentType || "") + " · " + humanSize(part.Size) + (part.ContentID ? " · inline" : "")));
      list.append(item);
    }
    return list;
  }

  function envelopeTab(detail) {
    const env = detail.Envelope || {};
    const list = el("dl", "envelope");
    const tls = env.TLS ? env.TLS.Version + " " + env.TLS.Cipher : "no";
    const rows = [
      ["MAIL FROM", "<" + (env.MailFrom || "") + ">"],
      ["RCPT TO", (env.RcptTos || []).map((r) => "<" + r + ">").join(", ")],
      ["Peer", env.Peer || ""],
      ["TLS", tls],
      ["AUTH", env.Auth || "no"],
      ["MAIL options", (env.MailOptions || []).join(" ") || "none"],
      ["RCPT options", (env.RcptOptions || []).join(" ") || "none"],
      ["Received", longDate(env.Received)],
      ["Return-Path", detail.ReturnPath || ""],
    ];
    for (const [name, value] of rows) list.append(el("dt", "", name), el("dd", "", value));
    return list;
  }

  const TABS = {
    html: htmlTab,
    text: textTab,
    headers: headersTab,
    raw: rawTab,
    tree: treeTab,
    attachments: attachmentsTab,
    envelope: envelopeTab,
  };

  /* ---------- actions ---------- */

  async function deleteOpen() {
    const id = state.openId;
    if (!id) return;
    try {
      await request("DELETE", "/api/v1/messages", { IDs: [id] });
    } catch (error) {
      reportError("Could not delete it", error);
      return;
    }
    location.hash = "";
    scheduleRefresh();
  }

  async function deleteAll() {
    if (!window.confirm("Delete every captured message?")) return;
    try {
      await request("DELETE", "/api/v1/messages", {});
    } catch (error) {
      reportError("Could not delete the messages", error);
      return;
    }
    state.start = 0;
    location.hash = "";
    scheduleRefresh();
  }

  async function markAllRead() {
    try {
      await request("PUT", "/api/v1/messages", { IDs: [], Read: true });
    } catch (error) {
      reportError("Could not mark them read", error);
      return;
    }
    scheduleRefresh();
  }

  async function releaseOpen() {
    const detail = state.detail;
    if (!detail) return;
    const original = ((detail.Envelope || {}).RcptTos || []).join(", ");
    const answer = window.prompt("Release this message to (comma-separated addresses):", original);
    if (answer === null) return;
    const to = answer.split(",").map((s) => s.trim()).filter(Boolean);
    try {
      await request("POST", messagePath(detail.ID, "/release"), { To: to });
      showNotice("Released to " + to.join(", ") + ".", "ok");
    } catch (error) {
      reportError("Release failed", error);
    }
  }

  async function loadInfo() {
    try {
      const info = await getJSON("/api/v1/info");
      state.release = Boolean(info.Release);
      if (info.SMTP) {
        state.smtp = String(info.SMTP);
        $("message-empty").textContent = "Select a message to read it. Mail sent to " + state.smtp + " shows up here as it arrives.";
        if (!$("list-empty").hidden && !state.query) $("list-empty").textContent = emptyText("");
      }
    } catch (ignored) { /* an older server: no release button */ }
  }

  /* ---------- live updates ---------- */

  function setStatus(text, live) {
    const status = $("status");
    status.textContent = text;
    status.classList.toggle("live", live);
  }

  function connectEvents() {
    const events = new EventSource(location.origin + "/api/v1/events");
    events.addEventListener("open", () => setStatus("live", true));
    events.addEventListener("error", () => setStatus("reconnecting…", false));
    events.addEventListener("new", scheduleRefresh);
    events.addEventListener("read", scheduleRefresh);
    events.addEventListener("deleted", function (event) {
      let ids = null;
      try {
        ids = JSON.parse(event.data).IDs;
      } catch (ignored) { /* treat as "all" */ }
      if (state.openId && (ids === null || ids.indexOf(state.openId) >= 0)) {
        showMissing("This message was deleted.");
      }
      scheduleRefresh();
    });
  }

  /* ---------- wiring ---------- */

  function wire() {
    let searchTimer = null;
    $("search").addEventListener("input", function () {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(function () {
        state.query = $("search").value;
        state.start = 0;
        loadList();
      }, 250);
    });
    $("search-form").addEventListener("submit", function (event) {
      event.preventDefault();
      clearTimeout(searchTimer);
      state.query = $("search").value;
      state.start = 0;
      loadList();
    });
    $("newer").addEventListener("click", function () {
      state.start = Math.max(0, state.start - PAGE_SIZE);
      loadList();
    });
    $("older").addEventListener("click", function () {
      state.start += PAGE_SIZE;
      loadList();
    });
    $("delete-all").addEventListener("click", deleteAll);
    $("mark-all-read").addEventListener("click", markAllRead);
    $("delete-one").addEventListener("click", deleteOpen);
    $("release").addEventListener("click", releaseOpen);
    $("back").addEventListener("click", () => { location.hash = ""; });
    $("tabs").addEventListener("click", function (event) {
      const button = event.target.closest("button[data-tab]");
      if (button && state.detail) showTab(button.dataset.tab);
    });
    window.addEventListener("hashchange", routeFromHash);
    document.addEventListener("keydown", function (event) {
      const typing = event.target instanceof HTMLInputElement;
      if (event.key === "/" && !typing) {
        event.preventDefault();
        $("search").focus();
      } else if (event.key === "Escape" && !typing && state.openId) {
        location.hash = "";
      }
    });
  }

  wire();
  loadInfo();
  loadList();
  connectEvents();
  routeFromHash();
})();
