// The quorumfs web console: polls the master that served this page and draws what it
// reports. No framework, no build step; every value is put in the page as text.
"use strict";

(function () {
  const REFRESH_MS = 1000;
  const TOKEN_KEY = "quorumfs.adminToken"; // sessionStorage only: never a cookie or the URL
  const DASH = "\u2013";

  const $ = (id) => document.getElementById(id);
  let overview = null;
  let refreshing = false;

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function link(address) {
    const a = document.createElement("a");
    a.href = "http://" + address + "/";
    a.textContent = address;
    return a;
  }

  function known(value) {
    return value !== null && value !== undefined;
  }

  function millis(value, suffix) {
    return known(value) ? value + " ms" + (suffix || "") : DASH;
  }

  function size(bytes) {
    if (!known(bytes)) return DASH;
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let value = bytes;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return (unit === 0 ? value : value.toFixed(1)) + " " + units[unit];
  }

  function errorMessage(body, response) {
    if (body && body.error && body.error.message) return body.error.message;
    return "HTTP " + response.status + " " + response.statusText;
  }

  async function getJson(path) {
    const response = await fetch(path, { cache: "no-store", headers: { Accept: "application/json" } });
    let body = null;
    try {
      body = await response.json();
    } catch (ignored) {
      body = null;
    }
    if (!response.ok) throw new Error(errorMessage(body, response));
    return body;
  }

  function banner(id, kind, text) {
    const element = $(id);
    element.hidden = !text;
    element.className = "banner " + kind;
    element.textContent = text || "";
  }

  // ------------------------------------------------------------------ masters

  function leaderReport(data, own) {
    const named = data.masters.find((m) => m.id === own.leader_id && m.status);
    if (named && named.status.role === "LEADER") return named;
    return data.masters.find((m) => m.status && m.status.role === "LEADER") || null;
  }

  function drawMasters(data) {
    const self = data.masters.find((m) => m.id === data.served_by);
    const own = self.status;
    const leader = leaderReport(data, own);
    const leaderView = new Map();
    if (leader) for (const member of leader.status.members) leaderView.set(member.id, member);
    const ownView = new Map(own.members.map((m) => [m.id, m]));

    $("served-by").textContent =
      "master " + own.id + " (" + self.http + ") " + own.role + ", term " + own.term;
    document.title = "quorumfs \u00b7 master " + own.id + " \u00b7 " + own.role;
    const leaderElement = $("leader");
    const leaderKey = own.leader_id + " " + own.leader_http + " " + own.id;
    if (leaderElement.dataset.shown !== leaderKey) {
      // Redrawn only when it changes, so the link stays put under the pointer.
      leaderElement.dataset.shown = leaderKey;
      leaderElement.replaceChildren();
      if (known(own.leader_http)) {
        leaderElement.append("member " + own.leader_id + " at ");
        leaderElement.appendChild(link(own.leader_http));
        if (own.leader_id === own.id) leaderElement.append(" (this master)");
      } else {
        leaderElement.textContent = "none known (an election may be under way)";
      }
    }
    $("term").textContent = String(own.term);
    $("lease").textContent = leader ? millis(leader.status.lease_remaining_ms) : DASH;
    banner("warnings", "warning", own.warnings.join("; "));
    $("step-down-panel").hidden = own.role !== "LEADER";

    const body = $("masters").tBodies[0];
    const rows = [];
    for (const report of data.masters) {
      const status = report.status;
      const seen = ownView.get(report.id);
      const fromLeader = leaderView.get(report.id);
      const row = document.createElement("tr");
      row.dataset.memberId = String(report.id);
      cell(row, String(report.id));
      cell(row, "").appendChild(link(report.http));
      const role = status ? status.role : seen ? seen.role : DASH;
      const roleCell = cell(row, role, "role role-" + role);
      if (!status) roleCell.title = "as master " + own.id + " sees it: the master did not answer";
      if (report.id === own.id) row.classList.add("self");
      cell(row, status ? String(status.term) : DASH);
      cell(row, status && status.role === "LEADER" ? millis(status.lease_remaining_ms) : DASH);
      // The leader's last contact with a follower, when the leader reports it.
      const contact = fromLeader && fromLeader.id !== leader.id ? fromLeader.last_contact_ms : null;
      const heard = known(contact) ? "; leader heard it " + contact + " ms ago" : "";
      if (report.id === own.id) {
        cell(row, "this master" + heard, "ok");
      } else if (report.reachable) {
        cell(row, "reachable, " + report.round_trip_ms + " ms" + heard, "ok");
      } else {
        cell(row, "unreachable: " + report.error + heard, "bad");
      }
      cell(row, fromLeader && known(fromLeader.match_index) ? String(fromLeader.match_index) : DASH);
      cell(row, status ? String(status.commit_index) : DASH);
      cell(row, status ? String(status.applied_index) : DASH);
      rows.push(row);
    }
    body.replaceChildren(...rows);
  }

  // ------------------------------------------------------------------ volumes

  function drawVolumes(result) {
    const body = $("volumes").tBodies[0];
    if (result.status === "rejected") {
      body.replaceChildren();
      $("volumes-note").textContent = "Volume servers unknown: " + result.reason.message;
      return;
    }
    const volumes = result.value.volumes;
    const rows = volumes.map((v) => {
      const row = document.createElement("tr");
      row.dataset.volumeId = String(v.volume_id);
      cell(row, String(v.volume_id));
      cell(row, v.address);
      const state = v.alive ? (v.writable ? "writable" : "alive, not writable") : "dead";
      cell(row, state, v.alive ? (v.writable ? "ok" : "warn") : "bad");
      cell(row, size(v.capacity));
      cell(row, size(v.used));
      cell(row, size(v.free));
      cell(row, String(v.chunks));
      cell(row, String(v.corrupt), v.corrupt ? "bad" : "");
      cell(row, known(v.last_heartbeat_ms) ? v.last_heartbeat_ms + " ms ago" : "never");
      return row;
    });
    body.replaceChildren(...rows);
    $("volumes-note").textContent =
      (volumes.length ? "" : "No volume server has registered with the leader. ") +
      "Under-replicated chunks: " + result.value.under_replicated +
      ", repairs in flight: " + result.value.repairs_in_flight + " (the leader's view).";
  }

  // ------------------------------------------------------------------ refresh

  async function refresh() {
    if (refreshing) return;
    refreshing = true;
    try {
      const [masters, volumes] = await Promise.allSettled([
        getJson("/cluster/overview"),
        getJson("/v1/volumes"),
      ]);
      if (masters.status === "fulfilled") {
        overview = masters.value;
        drawMasters(overview);
        banner("problem", "error", "");
      } else {
        banner("problem", "error", "This master does not answer: " + masters.reason.message);
      }
      drawVolumes(volumes);
      $("refreshed").textContent = "updated " + new Date().toLocaleTimeString();
    } finally {
      refreshing = false;
    }
  }

  function loop() {
    refresh().finally(() => window.setTimeout(loop, REFRESH_MS));
  }

  // ---------------------------------------------------------------- step down

  async function stepDown(event) {
    event.preventDefault();
    const input = $("admin-token");
    const token = input.value.trim();
    if (!token) {
      banner("action-result", "error",
        "Enter the admin token first: it is in the file admin.token in any master directory.");
      input.focus();
      return;
    }
    const self = overview && overview.masters.find((m) => m.id === overview.served_by);
    const who = self ? "master " + self.id + " (" + self.http + ")" : "this master";
    if (!window.confirm("Step down " + who + "? Leadership moves to the most caught-up voting master.")) {
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    const button = $("step-down");
    button.disabled = true;
    banner("action-result", "pending", "Stepping down\u2026");
    try {
      const response = await fetch("/cluster/step-down", {
        method: "POST",
        headers: { Authorization: "Bearer " + token, Accept: "application/json" },
      });
      let body = null;
      try {
        body = await response.json();
      } catch (ignored) {
        body = null;
      }
      if (response.ok) {
        banner("action-result", "ok", "member " + body.leader_id + " (" + body.leader_http + ") leads now");
      } else {
        if (response.status === 401) sessionStorage.removeItem(TOKEN_KEY);
        banner("action-result", "error", "Step Down failed: " + errorMessage(body, response));
      }
    } catch (error) {
      banner("action-result", "error", "Step Down failed: " + error.message);
    } finally {
      button.disabled = false;
      refresh();
    }
  }

  $("admin-token").value = sessionStorage.getItem(TOKEN_KEY) || "";
  $("step-down-form").addEventListener("submit", stepDown);
  loop();
})();
