// Cuttle's web view: keeps the server-rendered pages live through the service's own API.
// Everything from the server is set with textContent, never as HTML.
"use strict";

(function () {
  function when(ms) {
    return ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) : "";
  }

  function duration(ms) {
    const s = Math.floor(ms / 100) / 10;
    if (s < 60) return s + "s";
    const m = Math.floor(s / 60);
    return m + "m" + Math.round(s - m * 60) + "s";
  }

  function element(tag, text, className) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (className) e.className = className;
    return e;
  }

  // The ticket list: the same query as the page, every two seconds.
  function liveList(table) {
    const body = table.tBodies[0];
    function row(t) {
      const tr = element("tr", undefined, "state-" + t.state + " outcome-" + (t.outcome || "none"));
      const link = element("a");
      link.href = "/tickets/" + encodeURIComponent(t.ticket);
      link.appendChild(element("code", t.ticket));
      const first = element("td");
      first.appendChild(link);
      tr.appendChild(first);
      tr.appendChild(element("td", t.target, "long"));
      tr.appendChild(element("td", t.state, "state"));
      tr.appendChild(element("td", t.outcome || "", "outcome"));
      tr.appendChild(element("td", t.exit_code === null || t.exit_code === undefined ? "" : String(t.exit_code), "wide"));
      tr.appendChild(element("td", String(t.retries), "wide"));
      tr.appendChild(element("td", when(t.submitted_at), "wide"));
      return tr;
    }
    async function refresh() {
      try {
        const response = await fetch("/v1/tickets?" + table.dataset.query, { credentials: "same-origin" });
        if (response.ok) {
          const list = await response.json();
          body.replaceChildren.apply(body, list.tickets.map(row));
        }
      } catch (e) {
        // The next refresh tries again.
      }
      setTimeout(refresh, 2000);
    }
    setTimeout(refresh, 2000);
  }

  // Stream entry ids are "<ms>-<n>": is a after b?
  function after(a, b) {
    const [am, an] = a.split("-").map(Number);
    const [bm, bn] = b.split("-").map(Number);
    return am > bm || (am === bm && an > (bn || 0));
  }

  // One ticket: its events from the server-sent event stream, after those already on the page.
  function liveTicket(section) {
    const ticket = section.dataset.ticket;
    let last = section.dataset.lastEvent || "0";
    const output = document.getElementById("output");
    const retries = document.getElementById("retries");
    const state = document.getElementById("state");
    const result = document.getElementById("result");
    if (!result.classList.contains("pending")) return;
    const source = new EventSource("/v1/tickets/" + encodeURIComponent(ticket) + "/events");
    const handlers = {
      log: function (e) {
        const stream = ["stdout", "stderr"].includes(e.stream) ? e.stream : "agent";
        const line = element("span", e.text, "line " + stream);
        line.dataset.seq = String(e.seq);
        output.appendChild(line);
        output.appendChild(document.createTextNode("\n"));
        state.textContent = "running";
      },
      retry: function (e, at) {
        const item = element("li", undefined, "retry");
        item.appendChild(element("time", when(at)));
        item.appendChild(document.createTextNode(" " + e.request + " attempt " + e.attempt + " failed: "));
        item.appendChild(element("span", e.error, "error"));
        item.appendChild(document.createTextNode("; again in " + duration(e.delay_ms) + ", " + duration(e.time_left_ms) + " left"));
        retries.appendChild(item);
      },
      notice: function (e, at) {
        const item = element("li", undefined, "notice");
        item.appendChild(element("time", when(at)));
        item.appendChild(document.createTextNode(" " + e.message));
        retries.appendChild(item);
      },
      result: function (e) {
        result.replaceChildren(document.createTextNode("Finished: "), element("strong", e.outcome));
        if (e.exit_code !== null && e.exit_code !== undefined) result.appendChild(document.createTextNode(", exit code " + e.exit_code));
        if (e.error) {
          result.appendChild(document.createTextNode(": "));
          result.appendChild(element("span", e.error, "error"));
        }
        result.className = "result";
        state.textContent = "finished";
        source.close();
      },
    };
    Object.keys(handlers).forEach(function (kind) {
      source.addEventListener(kind, function (message) {
        if (!after(message.lastEventId, last)) return;
        last = message.lastEventId;
        handlers[kind](JSON.parse(message.data), Number(message.lastEventId.split("-")[0]));
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const list = document.getElementById("tickets");
    if (list) liveList(list);
    const ticket = document.getElementById("ticket");
    if (ticket) liveTicket(ticket);
  });
})();
