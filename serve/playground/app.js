// The playground page: asks GET /v1/models what the app serves, sends POST /v1/generate, and shows
// the answer: audio, its log-Mel spectrogram (computed here from the WAV with the app's own feature
// settings from /v1/models) and the guide's scores. Plain browser JavaScript, no libraries.
"use strict";

const $ = (id) => document.getElementById(id);
let features = null; // the app's STFT / Mel settings (GET /v1/models "features")
let voiceSupported = false;

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status}: ${body.detail || JSON.stringify(body)}`;
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

function fillSelect(select, values, chosen) {
  select.replaceChildren(...values.map((v) => new Option(v, v, false, v === chosen)));
}

async function loadModels() {
  const response = await fetch("v1/models", { headers: authHeaders() });
  if (!response.ok) {
    setStatus(`GET /v1/models answered ${await errorText(response)}` +
      (response.status === 401 ? " (enter the API token, then reload the models)" : ""), true);
    $("generate").disabled = response.status !== 401;
    return false;
  }
  const models = await response.json();
  features = models.features || null;
  const digitGuides = models.guides.filter((g) => g.guide === "digit");
  fillSelect($("guide-kind"), digitGuides.map((g) => g.guide_kind), "clean");  // the default kind of digit targets
  const labels = digitGuides.length ? digitGuides[0].labels : [];
  fillSelect($("digit"), labels, labels.includes("7") ? "7" : labels[0]);
  const unsupported = models.unsupported_guides || [];
  voiceSupported = !unsupported.includes("speaker") && models.guides.some((g) => g.guide === "speaker");
  $("voice-controls").hidden = !voiceSupported;
  $("voice-note").textContent = voiceSupported
    ? "Upload a short WAV of the voice to imitate."
    : "This app does not serve speaker guidance yet (GET /v1/models lists it under unsupported_guides): " +
      "reference voices work in-process with `speechguide generate --target speaker=FILE.wav`.";
  $("pitch-box").hidden = !models.guides.some((g) => g.guide === "pitch");  // when the app hosts the pitch guide
  $("generate").disabled = false;
  setStatus(`ready: ${models.generator} generator, ${models.vocoder.kind || "vocoder"}, ${models.sample_rate} Hz`);
  return true;
}

function base64ToBytes(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

function bytesToBase64(bytes) {
  let raw = "";
  for (let i = 0; i < bytes.length; i += 0x8000) raw += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(raw);
}

// ---- WAV -> samples (16-bit PCM, what the app writes) -------------------------------------------

function readWav(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const tag = (at) => String.fromCharCode(...bytes.subarray(at, at + 4));
  if (tag(0) !== "RIFF" || tag(8) !== "WAVE") throw new Error("not a WAV file");
  let fmt = null;
  for (let at = 12; at + 8 <= bytes.length; ) {
    const id = tag(at), size = view.getUint32(at + 4, true), body = at + 8;
    if (id === "fmt ") {
      fmt = { format: view.getUint16(body, true), channels: view.getUint16(body + 2, true),
              rate: view.getUint32(body + 4, true), bits: view.getUint16(body + 14, true) };
    } else if (id === "data") {
      if (!fmt || fmt.format !== 1 || fmt.bits !== 16) throw new Error("expected 16-bit PCM");
      const frames = Math.floor(Math.min(size, bytes.length - body) / (2 * fmt.channels));
      const samples = new Float32Array(frames);
      for (let i = 0; i < frames; i++) samples[i] = view.getInt16(body + 2 * i * fmt.channels, true) / 32768;
      return { samples, rate: fmt.rate };
    }
    at = body + size + (size % 2);
  }
  throw new Error("WAV file has no data chunk");
}

// ---- log-Mel spectrogram: Hann-windowed centred STFT, HTK Mel filters, power, log --------------

function fft(re, im) { // in place, radix 2; length a power of two
  const n = re.length;
  for (let i = 1, j = 0; i < n; i++) {
    let bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) { [re[i], re[j]] = [re[j], re[i]]; [im[i], im[j]] = [im[j], im[i]]; }
  }
  for (let len = 2; len <= n; len <<= 1) {
    const ang = (-2 * Math.PI) / len, wr = Math.cos(ang), wi = Math.sin(ang);
    for (let i = 0; i < n; i += len) {
      let cr = 1, ci = 0;
      for (let k = 0; k < len / 2; k++) {
        const a = i + k, b = a + len / 2;
        const tr = re[b] * cr - im[b] * ci, ti = re[b] * ci + im[b] * cr;
        re[b] = re[a] - tr; im[b] = im[a] - ti; re[a] += tr; im[a] += ti;
        [cr, ci] = [cr * wr - ci * wi, cr * wi + ci * wr];
      }
    }
  }
}

function melFilters(nFft, rate, nMels, fMin, fMax) {
  const hz2mel = (f) => 2595 * Math.log10(1 + f / 700);
  const mel2hz = (m) => 700 * (10 ** (m / 2595) - 1);
  const bins = nFft / 2 + 1, lo = hz2mel(fMin), hi = hz2mel(fMax);
  const points = Array.from({ length: nMels + 2 }, (_, i) => mel2hz(lo + ((hi - lo) * i) / (nMels + 1)));
  return Array.from({ length: nMels }, (_, m) => {
    const w = new Float32Array(bins);
    for (let k = 0; k < bins; k++) {
      const f = (k * rate) / nFft;
      const up = (f - points[m]) / (points[m + 1] - points[m]), down = (points[m + 2] - f) / (points[m + 2] - points[m + 1]);
      w[k] = Math.max(0, Math.min(up, down));
    }
    return w;
  });
}

function logMel(samples, rate, f) {
  const nFft = f.n_fft, hop = f.hop_length, pad = nFft / 2;
  const at = (i) => { // reflect padding, as torch.stft(center=True)
    if (i < 0) i = -i;
    if (i >= samples.length) i = 2 * samples.length - 2 - i;
    return samples[Math.max(0, Math.min(samples.length - 1, i))];
  };
  const window = Float32Array.from({ length: nFft }, (_, i) => 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / nFft));
  const filters = melFilters(nFft, rate, f.n_mels, f.f_min, f.f_max ?? rate / 2);
  const frames = 1 + Math.floor(samples.length / hop);
  const out = [];
  for (let t = 0; t < frames; t++) {
    const re = new Float32Array(nFft), im = new Float32Array(nFft);
    for (let i = 0; i < nFft; i++) re[i] = at(t * hop + i - pad) * window[i];
    fft(re, im);
    const power = new Float32Array(nFft / 2 + 1);
    for (let k = 0; k < power.length; k++) power[k] = re[k] * re[k] + im[k] * im[k];
    out.push(filters.map((w) => { let s = 0; for (let k = 0; k < w.length; k++) s += w[k] * power[k]; return Math.log(s + 1e-10); }));
  }
  return out; // [frame][mel]
}

const COLORS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]]; // viridis stops

function color(v) { // v in [0, 1]
  const x = Math.max(0, Math.min(1, v)) * (COLORS.length - 1), i = Math.min(COLORS.length - 2, Math.floor(x)), t = x - i;
  return COLORS[i].map((c, j) => Math.round(c + (COLORS[i + 1][j] - c) * t));
}

function drawSpectrogram(canvas, mel) {
  const frames = mel.length, bands = mel[0].length;
  const top = Math.max(...mel.map((row) => Math.max(...row))), floor = top - Math.log(10 ** 8); // 80 dB of range
  canvas.width = frames; canvas.height = bands;
  const ctx = canvas.getContext("2d"), image = ctx.createImageData(frames, bands);
  for (let t = 0; t < frames; t++) {
    for (let m = 0; m < bands; m++) {
      const [r, g, b] = color((mel[t][m] - floor) / (top - floor));
      const p = 4 * ((bands - 1 - m) * frames + t); // low frequencies at the bottom
      image.data.set([r, g, b, 255], p);
    }
  }
  ctx.putImageData(image, 0, 0);
  canvas.dataset.frames = String(frames);
  canvas.dataset.mels = String(bands);
}

// ---- the request ---------------------------------------------------------------------------------

async function requestBody() {
  const body = {
    targets: [{ guide: "digit", label: $("digit").value }],
    num_samples: 1,
    seed: Number($("seed").value || 0),
    guide_kind: $("guide-kind").value,
  };
  if ($("steps").value !== "") body.steps = Number($("steps").value);
  if ($("scale").value !== "") body.guidance_scale = Number($("scale").value);
  const file = $("voice-file").files[0];
  if (voiceSupported && file && !$("voice-off").checked) {
    body.targets.push({ guide: "speaker", reference_wav_base64: bytesToBase64(new Uint8Array(await file.arrayBuffer())) });
  }
  const pitch = $("pitch").value.trim();
  if (!$("pitch-box").hidden && pitch !== "") body.targets.push({ guide: "pitch", label: pitch });
  return body;
}

function showScores(sample, answer) {
  const rows = [
    ["target", `${sample.target.guide} ${sample.target.label}`],
    ...Object.entries(sample.scores).map(([k, v]) => [k.replaceAll("_", " "), String(v)]),
    ["sampler steps", String(answer.stats.steps)],
    ["total time", `${(answer.timings_ms.total / 1000).toFixed(2)} s`],
  ];
  $("scores").tBodies[0].replaceChildren(...rows.map(([k, v]) => {
    const tr = document.createElement("tr");
    tr.append(Object.assign(document.createElement("td"), { textContent: k }), Object.assign(document.createElement("td"), { textContent: v }));
    return tr;
  }));
  $("details").textContent = JSON.stringify({ models: answer.models, timings_ms: answer.timings_ms, profile: answer.profile }, null, 2);
}

async function generate(event) {
  event.preventDefault();
  if (!features && !(await loadModels())) return;
  $("generate").disabled = true;
  document.body.dataset.state = "generating";
  setStatus("generating…");
  try {
    const response = await fetch("v1/generate", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json", ...authHeaders() },
      body: JSON.stringify(await requestBody()),
    });
    if (!response.ok) throw new Error(await errorText(response));
    const answer = await response.json();
    const sample = answer.samples[0];
    const wav = base64ToBytes(sample.wav_base64);
    const audio = $("audio");
    if (audio.src) URL.revokeObjectURL(audio.src);
    audio.src = URL.createObjectURL(new Blob([wav], { type: "audio/wav" }));
    const { samples, rate } = readWav(wav);
    if (features) {
      drawSpectrogram($("spectrogram"), logMel(samples, rate, features));
      $("spectrogram-caption").textContent =
        `log-Mel spectrogram (${features.n_mels} Mel bands, ${features.n_fft}-point FFT, hop ${features.hop_length}), computed in this page from the WAV`;
    }
    showScores(sample, answer);
    $("result").hidden = false;
    document.body.dataset.state = "done";
    setStatus(`done in ${(answer.timings_ms.total / 1000).toFixed(2)} s`);
  } catch (err) {
    document.body.dataset.state = "error";
    setStatus(`request failed: ${err.message}`, true);
  } finally {
    $("generate").disabled = false;
  }
}

$("request-form").addEventListener("submit", generate);
$("token").addEventListener("change", loadModels);
loadModels().catch((err) => setStatus(`could not reach the app: ${err.message}`, true));
