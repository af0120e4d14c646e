// The dashboard: one card per running vGPU with its live display, mode, share
// of the engine against its weight, and counters; create and remove buttons.
// Plain JS against the daemon's HTTP API and its /api/v1/live WebSocket.

const params = new URLSearchParams(location.search);
/** A fixed scale for every display (1: every pixel); otherwise thumbnails about 320 wide. */
const fixedScale = params.has("scale") ? Number(params.get("scale")) : undefined;
const fps = Number(params.get("fps") ?? 10);
const HISTORY = 60;
const FRAME_HEADER = 48;

const cards = new Map();
const $ = (id) => document.getElementById(id);
let socket;

function say(text) {
  $("message").textContent = text;
}

async function api(method, path, body) {
  const r = await fetch(path, {
    method,
    ...(body ? { body: JSON.stringify(body), headers: { "content-type": "application/json" } } : {}),
  });
  const data = r.status === 204 ? undefined : await r.json();
  if (!r.ok) throw new Error(`${data.error} (${data.code})`);
  return data;
}

function scaleFor(card) {
  if (card.full) return 1;
  if (fixedScale) return fixedScale;
  const width = card.mode?.width || 640;
  return Math.max(1, Math.min(16, Math.round(width / 320)));
}

function subscribe(card) {
  card.scale = scaleFor(card);
  if (socket?.readyState === WebSocket.OPEN)
    socket.send(JSON.stringify({ subscribe: card.uuid, scale: card.scale, fps }));
}

function addCard(v) {
  const node = $("card").content.firstElementChild.cloneNode(true);
  node.dataset.uuid = v.uuid;
  node.querySelector(".uuid").textContent = v.uuid.slice(0, 8);
  node.querySelector(".uuid").title = v.uuid;
  node.querySelector(".type").textContent = v.type;
  const card = {
    uuid: v.uuid,
    node,
    canvas: node.querySelector("canvas.display"),
    chart: node.querySelector("canvas.chart"),
    history: [],
    full: false,
    last: undefined,
  };
  node.querySelector(".remove").addEventListener("click", async () => {
    try {
      await api("DELETE", `/api/v1/vgpus/${v.uuid}`);
      say("");
    } catch (e) {
      say(`remove: ${e.message}`);
    }
  });
  card.canvas.addEventListener("click", () => {
    card.full = !card.full;
    node.classList.toggle("full", card.full);
    subscribe(card);
  });
  cards.set(v.uuid, card);
  $("cards").append(node);
  subscribe(card);
  return card;
}

function removeCard(card) {
  if (socket?.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ unsubscribe: card.uuid }));
  card.node.remove();
  cards.delete(card.uuid);
}

const counters = [
  ["traps", (v) => v.traps],
  ["GTT upd", (v) => v.stats.gttUpdates],
  ["commands", (v) => v.stats.commands],
  ["rejected", (v) => v.stats.rejected + v.stats.gttRejected],
  ["irqs", (v) => v.stats.interrupts],
  ["hangs", (v) => v.stats.hangs],
  ["DMA", (v) => bytes(v.dmaBytes)],
  ["engine", (v) => `${(v.stats.busyMs / 1000).toFixed(2)} s`],
];

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

function state(s) {
  const weights = s.vgpus.reduce((n, v) => n + v.weight, 0);
  const busy = new Map(s.vgpus.map((v) => [v.uuid, v.stats.busyMs]));
  let busyDelta = 0;
  for (const v of s.vgpus)
    busyDelta += Math.max(0, v.stats.busyMs - (cards.get(v.uuid)?.last?.stats.busyMs ?? v.stats.busyMs));
  for (const card of [...cards.values()]) if (!busy.has(card.uuid)) removeCard(card);
  for (const v of s.vgpus) {
    const card = cards.get(v.uuid) ?? addCard(v);
    const rescale = card.mode?.width !== v.mode.width;
    card.mode = v.mode;
    if (rescale && scaleFor(card) !== card.scale) subscribe(card);
    const own = Math.max(0, v.stats.busyMs - (card.last?.stats.busyMs ?? v.stats.busyMs));
    const share = busyDelta > 0 ? own / busyDelta : 0;
    const weightShare = weights > 0 ? v.weight / weights : 0;
    card.history.push([share, weightShare]);
    if (card.history.length > HISTORY) card.history.shift();
    card.last = v;
    const m = v.mode;
    card.node.querySelector(".mode").textContent = m.enabled
      ? `${m.width}×${m.height}, ${m.bpp} bpp${v.error ? ` · engine error 0x${v.error.toString(16)}` : ""}`
      : "display off";
    if (v.vnc) card.node.querySelector(".mode").textContent += ` · VNC ${v.vnc}`;
    card.node.querySelector(".legend .now").textContent = `${(100 * share).toFixed(1)}%`;
    card.node.querySelector(".legend .weight").textContent = `${(100 * weightShare).toFixed(1)}%`;
    const dl = card.node.querySelector(".counters");
    dl.replaceChildren(
      ...counters.flatMap(([name, get]) => {
        const dt = document.createElement("dt");
        dt.textContent = name;
        const dd = document.createElement("dd");
        dd.textContent = String(get(v));
        dd.dataset.counter = name;
        return [dt, dd];
      }),
    );
    drawChart(card);
  }
}

function drawChart(card) {
  const c = card.chart;
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const style = getComputedStyle(document.documentElement);
  const line = (index, color) => {
    g.strokeStyle = color;
    g.lineWidth = 1.5;
    g.beginPath();
    card.history.forEach((h, i) => {
      const x = (i / (HISTORY - 1)) * c.width;
      const y = c.height - 2 - h[index] * (c.height - 4);
      if (i === 0) g.moveTo(x, y);
      else g.lineTo(x, y);
    });
    g.stroke();
  };
  line(1, style.getPropertyValue("--weight"));
  line(0, style.getPropertyValue("--share"));
}

async function frame(data) {
  const view = new DataView(data);
  if (view.getUint8(0) !== 1 || view.getUint8(1) !== 1) return;
  const scale = view.getUint16(2, true);
  const width = view.getUint16(4, true);
  const height = view.getUint16(6, true);
  const seq = view.getUint32(8, true);
  const uuid = new TextDecoder().decode(new Uint8Array(data, 12, 36));
  const card = cards.get(uuid);
  if (!card || scale !== card.scale) return;
  const stream = new Blob([new Uint8Array(data, FRAME_HEADER)])
    .stream()
    .pipeThrough(new DecompressionStream("deflate"));
  const rgba = new Uint8ClampedArray(await new Response(stream).arrayBuffer());
  if (card.canvas.width !== width || card.canvas.height !== height) {
    card.canvas.width = width;
    card.canvas.height = height;
  }
  card.canvas.getContext("2d").putImageData(new ImageData(rgba, width, height), 0, 0);
  card.canvas.dataset.seq = String(seq);
  card.canvas.dataset.scale = String(scale);
}

function connect() {
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/v1/live`;
  socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  socket.addEventListener("open", () => {
    $("status").textContent = "live";
    for (const card of cards.values()) subscribe(card);
  });
  socket.addEventListener("message", (e) => {
    if (typeof e.data !== "string") return void frame(e.data);
    const m = JSON.parse(e.data);
    if (m.type === "state") state(m);
    else if (m.type === "error") say(m.error);
  });
  socket.addEventListener("close", () => {
    $("status").textContent = "disconnected; retrying…";
    setTimeout(connect, 1000);
  });
}

async function init() {
  try {
    const types = await api("GET", "/api/v1/types");
    $("type").replaceChildren(
      ...types.map((t) => {
        const o = document.createElement("option");
        o.value = t.name;
        o.textContent = `${t.name} (${t.availableInstances} free)`;
        return o;
      }),
    );
  } catch (e) {
    say(`types: ${e.message}`);
  }
  $("create").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await api("POST", "/api/v1/vgpus", { type: $("type").value });
      say("");
    } catch (err) {
      say(`create: ${err.message}`);
    }
  });
  connect();
}

void init();
