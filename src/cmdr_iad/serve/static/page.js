// cmdr-iad operator page: upload a part, show the decision, the heatmap and the point cloud.
// Written for this project; no third-party code.
"use strict";

const $ = (id) => document.getElementById(id);
let cloud = null;        // {xyz: [[x,y,z]...], rgb: [[r,g,b]...]} of the shown result
let view = { yaw: 0.6, pitch: -0.5, zoom: 1.0 };

function fmt(v) { return v === null || v === undefined ? "–" : Number(v).toPrecision(4); }

async function getJSON(url, opts) {
  const r = await fetch(url, opts);
  const body = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

async function loadModel() {
  for (;;) {
    try {
      const m = await getJSON("/v1/model");
      $("model-name").textContent = `${m.name} · ${m.modality} · ${m.preset} preset · ${m.device}`;
      if (m.random_backbones) {
        const w = $("random-warning");
        w.textContent = m.warning; w.hidden = false;
      }
      return;
    } catch (e) { await new Promise((res) => setTimeout(res, 1000)); }
  }
}

function show(res) {
  const d = $("decision");
  if (res.is_anomalous === null) { d.className = "decision none"; d.textContent = "NO DECISION (no threshold)"; }
  else if (res.is_anomalous) { d.className = "decision bad"; d.textContent = "REJECT — anomalous"; }
  else { d.className = "decision ok"; d.textContent = "ACCEPT — normal"; }
  d.dataset.decision = res.is_anomalous === null ? "none" : (res.is_anomalous ? "anomalous" : "normal");
  $("score").textContent = fmt(res.score);
  $("threshold").textContent = fmt(res.threshold);
  $("bar-hi").textContent = res.threshold === null ? "max" : `threshold ${fmt(res.threshold)}`;
  $("branch").textContent = `(${res.branch} branch)`;
  $("notes").textContent = (res.notes || []).join(" · ");
  $("overlay").src = `/v1/results/${res.id}/overlay.png`;
  cloud = null; drawCloud();
  if ((res.files || []).includes("points.ply")) {
    getJSON(`/v1/results/${res.id}/points.json`).then((p) => { cloud = p; drawCloud(); }).catch(() => {});
  }
}

async function refreshHistory() {
  const items = await getJSON("/v1/results?n=10").catch(() => []);
  const ol = $("history");
  ol.innerHTML = "";
  for (const it of items) {
    const li = document.createElement("li");
    const tag = it.is_anomalous === null ? "?" : (it.is_anomalous ? "REJECT" : "ACCEPT");
    li.innerHTML = `<span class="tag ${it.is_anomalous ? "bad" : "ok"}">${tag}</span> score ${fmt(it.score)} <span class="muted">${it.id.slice(0, 8)}</span>`;
    li.onclick = async () => show(await getJSON(`/v1/results/${it.id}`));
    ol.appendChild(li);
  }
}

function classify(files) {
  for (const f of files) {
    const n = f.name.toLowerCase();
    if (/\.(png|jpe?g|bmp)$/.test(n)) setFile("rgb", f);
    else if (/\.(tiff?|npy|pcd)$/.test(n)) setFile("xyz", f);
  }
}

const chosen = { rgb: null, xyz: null };
function setFile(field, f) {
  chosen[field] = f;
  $("status").textContent = `rgb: ${chosen.rgb ? chosen.rgb.name : "–"} · point cloud: ${chosen.xyz ? chosen.xyz.name : "–"}`;
}

async function inspect(ev) {
  ev.preventDefault();
  if (!chosen.rgb && !chosen.xyz) { $("status").textContent = "choose an RGB image and/or a point cloud first"; return; }
  const fd = new FormData();
  if (chosen.rgb) fd.append("rgb", chosen.rgb, chosen.rgb.name);
  if (chosen.xyz) fd.append("xyz", chosen.xyz, chosen.xyz.name);
  fd.append("units", $("units").value);
  $("inspect").disabled = true; $("status").textContent = "inspecting…";
  try {
    const res = await getJSON("/v1/predict", { method: "POST", body: fd });
    $("status").textContent = `done in ${fmt(res.timing_ms.total)} ms`;
    show(res); refreshHistory();
  } catch (e) { $("status").textContent = `error: ${e.message}`; }
  finally { $("inspect").disabled = false; }
}

// --- point-cloud view: orthographic projection on a 2D canvas, painter's order by depth
function drawCloud() {
  const c = $("cloud"), g = c.getContext("2d");
  g.fillStyle = "#111"; g.fillRect(0, 0, c.width, c.height);
  if (!cloud || !cloud.xyz.length) {
    g.fillStyle = "#888"; g.font = "14px sans-serif"; g.fillText("no point cloud", 12, 22); return;
  }
  const p = cloud.xyz, n = p.length;
  let cx = 0, cy = 0, cz = 0;
  for (const q of p) { cx += q[0]; cy += q[1]; cz += q[2]; }
  cx /= n; cy /= n; cz /= n;
  let r = 1e-9;
  for (const q of p) r = Math.max(r, Math.hypot(q[0] - cx, q[1] - cy, q[2] - cz));
  const cyw = Math.cos(view.yaw), syw = Math.sin(view.yaw), cp = Math.cos(view.pitch), sp = Math.sin(view.pitch);
  const s = view.zoom * 0.45 * Math.min(c.width, c.height) / r;
  const pts = new Array(n);
  for (let i = 0; i < n; i++) {
    const x = p[i][0] - cx, y = p[i][1] - cy, z = p[i][2] - cz;
    const x1 = cyw * x + syw * z, z1 = -syw * x + cyw * z;
    const y2 = cp * y - sp * z1, z2 = sp * y + cp * z1;
    pts[i] = [c.width / 2 + s * x1, c.height / 2 + s * y2, z2, i];
  }
  pts.sort((a, b) => b[2] - a[2]);
  const size = Math.max(1.5, Math.min(4, 2.2 * view.zoom));
  for (const [u, v, , i] of pts) {
    const col = cloud.rgb[i];
    g.fillStyle = `rgb(${col[0]},${col[1]},${col[2]})`;
    g.fillRect(u, v, size, size);
  }
}

function setupViewer() {
  const c = $("cloud");
  let drag = null;
  c.addEventListener("mousedown", (e) => { drag = [e.clientX, e.clientY]; c.style.cursor = "grabbing"; });
  window.addEventListener("mouseup", () => { drag = null; c.style.cursor = "grab"; });
  window.addEventListener("mousemove", (e) => {
    if (!drag) return;
    view.yaw += (e.clientX - drag[0]) * 0.01;
    view.pitch = Math.max(-1.55, Math.min(1.55, view.pitch + (e.clientY - drag[1]) * 0.01));
    drag = [e.clientX, e.clientY]; drawCloud();
  });
  c.addEventListener("wheel", (e) => {
    e.preventDefault();
    view.zoom = Math.max(0.2, Math.min(8, view.zoom * (e.deltaY < 0 ? 1.1 : 1 / 1.1)));
    drawCloud();
  }, { passive: false });
}

function setupUpload() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); classify(e.dataTransfer.files); });
  $("files").addEventListener("change", (e) => classify(e.target.files));
  $("rgb").addEventListener("change", (e) => setFile("rgb", e.target.files[0] || null));
  $("xyz").addEventListener("change", (e) => setFile("xyz", e.target.files[0] || null));
  $("upload").addEventListener("submit", inspect);
}

setupUpload(); setupViewer(); drawCloud(); loadModel(); refreshHistory();
