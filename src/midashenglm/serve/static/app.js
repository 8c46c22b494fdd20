// The MiDashengLM web page: pick or record a clip, draw it, ask, stream the answer.
// Plain browser APIs only (no build step, nothing loaded from elsewhere).
"use strict";

const $ = (id) => document.getElementById(id);
const ui = {
  file: $("audio-file"), record: $("record"), recordText: $("record-text"),
  clipInfo: $("clip-info"), player: $("player"),
  waveform: $("waveform"), spectrogram: $("spectrogram"),
  form: $("ask-form"), preset: $("preset"), question: $("question"),
  maxTokens: $("max-tokens"), temperature: $("temperature"),
  ask: $("ask"), stop: $("stop"), answer: $("answer"), status: $("status"),
  modelName: $("model-name"),
  keyCard: $("key-card"), keyForm: $("key-form"), keyInput: $("api-key"), keyStatus: $("key-status"),
};

const state = { model: null, limits: null, keyRequired: false, clip: null, recorder: null, controller: null };
const ANALYSIS_RATE = 16000; // the model's rate; the spectrogram shows 0..8 kHz
const KEY_STORAGE = "midashenglm-api-key"; // sessionStorage: this tab only, gone when it closes

// ------------------------------------------------------------------ API key
function apiKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  } catch (err) {
    return state.memoryKey || ""; // storage disabled: keep it for this page only
  }
}

function storeKey(key) {
  state.memoryKey = key;
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch (err) { /* storage disabled: the in-memory copy serves */ }
}

function authHeaders(headers = {}) {
  const key = apiKey();
  return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
}

function askForKey(message) {
  ui.keyCard.hidden = false;
  ui.keyStatus.textContent = message || "";
  ui.keyStatus.classList.toggle("error", Boolean(message));
  ui.modelName.textContent = "API key needed";
  ui.keyInput.focus();
}

ui.keyForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const key = ui.keyInput.value.trim();
  if (!key) return;
  storeKey(key);
  ui.keyInput.value = "";
  ui.keyStatus.textContent = "Checking the key…";
  ui.keyStatus.classList.remove("error");
  loadServerInfo();
});

// ------------------------------------------------------------------ server info
async function loadServerInfo() {
  try {
    // /health is open: it says whether the /v1 routes need a key.
    const health = await fetch("/health").then((r) => r.json());
    state.limits = health.limits;
    state.keyRequired = Boolean(health.api_key_required);
    ui.maxTokens.max = String(state.limits.max_tokens);
    ui.maxTokens.value = String(Math.min(Number(ui.maxTokens.value), state.limits.max_tokens));
    if (state.keyRequired && !apiKey()) {
      askForKey("");
      return;
    }
    const response = await fetch("/v1/models", { headers: authHeaders() });
    if (response.status === 401) {
      storeKey("");
      askForKey("The server did not accept this key; enter it again.");
      return;
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const models = await response.json();
    state.model = models.data[0].id;
    ui.modelName.textContent = state.model;
    ui.keyCard.hidden = true;
    ui.keyStatus.textContent = "";
  } catch (err) {
    ui.modelName.textContent = "unavailable";
    setStatus(`Cannot reach the server: ${err.message}`, true);
  }
}

function setStatus(text, isError = false) {
  ui.status.textContent = text;
  ui.status.classList.toggle("error", isError);
}

// ------------------------------------------------------------------ the clip
const FORMATS = { wav: "wav", wave: "wav", mpeg: "mp3", mp3: "mp3", flac: "flac", ogg: "ogg",
  opus: "ogg", webm: "webm", mp4: "m4a", m4a: "m4a", aac: "aac", aiff: "aiff" };

function formatOf(name, type) {
  const ext = (name.split(".").pop() || "").toLowerCase();
  const sub = ((type || "").split("/")[1] || "").split(";")[0].replace("x-", "");
  return FORMATS[ext] || FORMATS[sub] || ext || "wav";
}

async function setClip(blob, name) {
  state.clip = { blob, name, format: formatOf(name, blob.type) };
  if (ui.player.src) URL.revokeObjectURL(ui.player.src);
  ui.player.src = URL.createObjectURL(blob);
  ui.player.hidden = false;
  ui.clipInfo.classList.remove("error");
  ui.clipInfo.textContent = `${name}: ${(blob.size / 1024).toFixed(0)} KiB, decoding…`;
  try {
    const samples = await decodeMono(await blob.arrayBuffer());
    const seconds = samples.length / ANALYSIS_RATE;
    let text = `${name}: ${seconds.toFixed(2)} s, ${(blob.size / 1024).toFixed(0)} KiB`;
    const limit = state.limits && state.limits.max_audio_seconds;
    if (limit && seconds > limit) text += ` (longer than this server's limit of ${limit} s)`;
    ui.clipInfo.textContent = text;
    drawWaveform(ui.waveform, samples);
    drawSpectrogram(ui.spectrogram, samples);
    ui.waveform.setAttribute("aria-label", `Waveform of ${name}, ${seconds.toFixed(1)} seconds`);
    ui.spectrogram.setAttribute("aria-label", `Spectrogram of ${name}, ${seconds.toFixed(1)} seconds`);
  } catch (err) {
    // The server may still read formats the browser cannot: keep the clip, explain.
    ui.clipInfo.textContent = `${name}: the browser cannot decode it for drawing (${err.message || err}); you can still ask.`;
    clearCanvas(ui.waveform);
    clearCanvas(ui.spectrogram);
  }
}

async function decodeMono(bytes) {
  // An offline context needs no user gesture and resamples to the model's rate while decoding.
  const ctx = new OfflineAudioContext(1, 1, ANALYSIS_RATE);
  const buffer = await ctx.decodeAudioData(bytes);
  const mono = new Float32Array(buffer.length);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    const data = buffer.getChannelData(c);
    for (let i = 0; i < data.length; i++) mono[i] += data[i] / buffer.numberOfChannels;
  }
  return mono;
}

ui.file.addEventListener("change", () => {
  const file = ui.file.files[0];
  if (file) setClip(file, file.name);
});

// ------------------------------------------------------------------ recording
ui.record.addEventListener("click", async () => {
  if (state.recorder) {
    state.recorder.stop();
    return;
  }
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    ui.clipInfo.textContent = "Recording is not available in this browser (it needs a secure page, e.g. http://localhost).";
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    ui.clipInfo.textContent = `No microphone: ${err.message}`;
    return;
  }
  const recorder = new MediaRecorder(stream);
  const chunks = [];
  recorder.addEventListener("dataavailable", (e) => chunks.push(e.data));
  recorder.addEventListener("stop", () => {
    stream.getTracks().forEach((t) => t.stop());
    state.recorder = null;
    ui.record.setAttribute("aria-pressed", "false");
    ui.recordText.textContent = "Record";
    const type = recorder.mimeType || "audio/webm";
    const ext = type.includes("ogg") ? "ogg" : type.includes("mp4") ? "m4a" : "webm";
    setClip(new Blob(chunks, { type }), `recording.${ext}`);
  });
  recorder.start();
  state.recorder = recorder;
  ui.record.setAttribute("aria-pressed", "true");
  ui.recordText.textContent = "Stop recording";
  ui.clipInfo.textContent = "Recording… press the button again to stop.";
});

// ------------------------------------------------------------------ drawing
function fitCanvas(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
  const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  return canvas.getContext("2d");
}

function clearCanvas(canvas) {
  fitCanvas(canvas).clearRect(0, 0, canvas.width, canvas.height);
}

function cssColor(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function drawWaveform(canvas, samples) {
  const ctx = fitCanvas(canvas);
  const { width, height } = canvas;
  ctx.fillStyle = cssColor("--canvas-bg");
  ctx.fillRect(0, 0, width, height);
  ctx.strokeStyle = cssColor("--wave");
  ctx.lineWidth = 1;
  const mid = height / 2;
  const step = samples.length / width;
  let peak = 1e-6;
  for (let i = 0; i < samples.length; i++) peak = Math.max(peak, Math.abs(samples[i]));
  const scale = (mid - 2) / peak;
  ctx.beginPath();
  for (let x = 0; x < width; x++) {
    const start = Math.floor(x * step);
    const end = Math.max(start + 1, Math.floor((x + 1) * step));
    let lo = Infinity;
    let hi = -Infinity;
    for (let i = start; i < end && i < samples.length; i++) {
      lo = Math.min(lo, samples[i]);
      hi = Math.max(hi, samples[i]);
    }
    if (lo === Infinity) continue;
    ctx.moveTo(x + 0.5, mid - hi * scale);
    ctx.lineTo(x + 0.5, mid - lo * scale + 1);
  }
  ctx.stroke();
}

// Radix-2 FFT, in place. Tables are built once per size.
const fftTables = new Map();
function fftTable(n) {
  if (!fftTables.has(n)) {
    const bits = Math.log2(n);
    const reverse = new Uint32Array(n);
    for (let i = 0; i < n; i++) {
      let r = 0;
      for (let b = 0; b < bits; b++) r |= ((i >> b) & 1) << (bits - 1 - b);
      reverse[i] = r;
    }
    const cos = new Float32Array(n / 2);
    const sin = new Float32Array(n / 2);
    for (let i = 0; i < n / 2; i++) {
      cos[i] = Math.cos((2 * Math.PI * i) / n);
      sin[i] = -Math.sin((2 * Math.PI * i) / n);
    }
    fftTables.set(n, { reverse, cos, sin });
  }
  return fftTables.get(n);
}

function fft(re, im) {
  const n = re.length;
  const { reverse, cos, sin } = fftTable(n);
  for (let i = 0; i < n; i++) {
    const j = reverse[i];
    if (j > i) {
      [re[i], re[j]] = [re[j], re[i]];
      [im[i], im[j]] = [im[j], im[i]];
    }
  }
  for (let size = 2; size <= n; size *= 2) {
    const half = size / 2;
    const stride = n / size;
    for (let start = 0; start < n; start += size) {
      for (let k = 0; k < half; k++) {
        const wr = cos[k * stride];
        const wi = sin[k * stride];
        const a = start + k;
        const b = a + half;
        const tr = re[b] * wr - im[b] * wi;
        const ti = re[b] * wi + im[b] * wr;
        re[b] = re[a] - tr;
        im[b] = im[a] - ti;
        re[a] += tr;
        im[a] += ti;
      }
    }
  }
}

// Dark blue -> purple -> orange -> pale yellow, readable in light and dark themes.
const COLORMAP = [[0, 0, 4], [59, 15, 112], [140, 41, 129], [222, 73, 104], [254, 159, 109], [252, 253, 191]];
function colour(v) {
  const x = Math.min(1, Math.max(0, v)) * (COLORMAP.length - 1);
  const i = Math.min(COLORMAP.length - 2, Math.floor(x));
  const t = x - i;
  return COLORMAP[i].map((c, k) => c + (COLORMAP[i + 1][k] - c) * t);
}

function drawSpectrogram(canvas, samples, nfft = 512, rangeDb = 80) {
  const ctx = fitCanvas(canvas);
  const bins = nfft / 2;
  const frames = Math.max(1, Math.min(canvas.width, Math.ceil(samples.length / 160)));
  const hop = Math.max(1, (samples.length - nfft) / Math.max(1, frames - 1));
  const hann = new Float32Array(nfft).map((_, i) => 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / nfft));
  const db = new Float32Array(frames * bins);
  const re = new Float32Array(nfft);
  const im = new Float32Array(nfft);
  let top = -Infinity;
  for (let f = 0; f < frames; f++) {
    const start = Math.round(f * hop);
    for (let i = 0; i < nfft; i++) {
      const s = samples[start + i];
      re[i] = (s === undefined ? 0 : s) * hann[i];
      im[i] = 0;
    }
    fft(re, im);
    for (let k = 0; k < bins; k++) {
      const value = 10 * Math.log10(re[k] * re[k] + im[k] * im[k] + 1e-10);
      db[f * bins + k] = value;
      if (value > top) top = value;
    }
  }
  const image = new ImageData(frames, bins);
  for (let f = 0; f < frames; f++) {
    for (let k = 0; k < bins; k++) {
      const [r, g, b] = colour((db[f * bins + k] - (top - rangeDb)) / rangeDb);
      const p = ((bins - 1 - k) * frames + f) * 4; // low frequencies at the bottom
      image.data[p] = r;
      image.data[p + 1] = g;
      image.data[p + 2] = b;
      image.data[p + 3] = 255;
    }
  }
  const scratch = document.createElement("canvas");
  scratch.width = frames;
  scratch.height = bins;
  scratch.getContext("2d").putImageData(image, 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(scratch, 0, 0, canvas.width, canvas.height);
}

// ------------------------------------------------------------------ asking
ui.preset.addEventListener("change", () => {
  if (ui.preset.value) ui.question.value = ui.preset.value;
  ui.question.focus();
});

ui.question.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    ui.form.requestSubmit();
  }
});

ui.stop.addEventListener("click", () => state.controller && state.controller.abort());

ui.form.addEventListener("submit", async (e) => {
  e.preventDefault();
  if (state.keyRequired && !apiKey()) {
    askForKey("Enter the API key first.");
    return;
  }
  const question = ui.question.value.trim();
  if (!question) {
    setStatus("Type a question first.", true);
    ui.question.focus();
    return;
  }
  const content = [];
  if (state.clip) {
    content.push({ type: "input_audio", input_audio: { data: await base64Of(state.clip.blob), format: state.clip.format } });
  }
  content.push({ type: "text", text: question });
  const body = {
    model: state.model,
    messages: [{ role: "user", content }],
    stream: true,
    stream_options: { include_usage: true },
    max_tokens: Number(ui.maxTokens.value) || 256,
    temperature: Number(ui.temperature.value) || 0,
  };
  await streamAnswer(body);
});

function base64Of(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

function setBusy(busy) {
  ui.ask.disabled = busy;
  ui.stop.disabled = !busy;
  ui.answer.setAttribute("aria-busy", String(busy));
}

async function streamAnswer(body) {
  state.controller = new AbortController();
  ui.answer.textContent = "";
  ui.answer.dataset.chunks = "0";
  ui.answer.classList.remove("error");
  setStatus(state.clip ? "Sending the clip…" : "Asking without a clip…");
  setBusy(true);
  const started = performance.now();
  let usage = null;
  let finish = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify(body),
      signal: state.controller.signal,
    });
    if (response.status === 401) {
      storeKey("");
      askForKey("The server did not accept this key; enter it again.");
    }
    if (!response.ok) {
      const detail = await response.json().catch(() => null);
      throw new Error(detail && detail.error ? detail.error.message : `HTTP ${response.status}`);
    }
    setStatus("Thinking…");
    for await (const event of sseEvents(response.body)) {
      if (event.error) throw new Error(event.error.message);
      if (event.usage) usage = event.usage;
      for (const choice of event.choices || []) {
        if (choice.delta && choice.delta.content) {
          ui.answer.textContent += choice.delta.content;
          ui.answer.dataset.chunks = String(Number(ui.answer.dataset.chunks) + 1);
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    let text = `Done in ${seconds} s`;
    if (usage) text += `: ${usage.prompt_tokens} prompt tokens (${usage.audio_tokens} for audio), ${usage.completion_tokens} answer tokens`;
    if (finish === "length") text += ". The answer reached the token limit.";
    setStatus(text);
  } catch (err) {
    if (err.name === "AbortError") {
      setStatus("Stopped.");
    } else {
      setStatus(`Error: ${err.message}`, true);
    }
  } finally {
    setBusy(false);
    state.controller = null;
  }
}

// Server-sent events from a fetch body: yields each JSON payload until [DONE].
async function* sseEvents(stream) {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

loadServerInfo();
