// Layer inspection page: three light images -> the defect detection service -> pass/fail, overlay, summary.
// Requests go to the page's own server (same origin), which passes them to TorchServe with the inference key;
// /config gives the model names and labels of the registered variants and the service's address.
"use strict";

const LIGHTS = [0, 1, 2];

const $ = (selector, root = document) => root.querySelector(selector);

async function serviceConfig() {
  const response = await fetch("/config", { cache: "no-store" });
  if (!response.ok) {
    throw new Error(`The page's server did not give its settings (HTTP ${response.status}).`);
  }
  return response.json();
}

function chosenFiles() {
  return LIGHTS.map((k) => {
    const input = $(`#angle${k}`);
    if (!input.files.length) {
      throw new Error(`Choose an image for light ${k}.`);
    }
    return input.files[0];
  });
}

async function predict(model, files) {
  const form = new FormData();
  files.forEach((file, k) => form.append(`angle${k}`, file, file.name));
  const started = performance.now();
  let response;
  try {
    response = await fetch(`/predictions/${model}`, { method: "POST", body: form });
  } catch (err) {
    throw new Error(`The page's server did not answer (${err.message}). Is it running (make web)?`);
  }
  const latency = performance.now() - started;
  let body = {};
  try {
    body = await response.json();
  } catch (err) {
    body = {};
  }
  if (!response.ok) {
    const why = body.message || response.statusText || "no reason given";
    throw new Error(`The service refused the images (HTTP ${response.status}): ${why}`);
  }
  return { answer: body, latency };
}

function decodeBase64(data) {
  const bytes = atob(data);
  const out = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i += 1) out[i] = bytes.charCodeAt(i);
  return out;
}

async function pixelsOf(blob, width, height) {
  // Gray values (the red channel) of an image scaled to width x height; null when the browser cannot decode it.
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob);
  } catch (err) {
    return null; // TIFF, for instance: browsers do not decode it
  }
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0, width, height);
  return context.getImageData(0, 0, width, height).data;
}

async function maskOf(answer) {
  const { width, height, data } = answer.mask;
  const pixels = await pixelsOf(new Blob([decodeBase64(data)], { type: "image/png" }), width, height);
  const mask = new Uint8Array(width * height);
  for (let i = 0; i < mask.length; i += 1) mask[i] = pixels[4 * i] > 127 ? 1 : 0;
  return mask;
}

async function drawOverlay(canvas, files, answer, mask, config) {
  const { width, height } = answer.mask;
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const image = context.createImageData(width, height);
  const lights = await Promise.all(files.map((file) => pixelsOf(file, width, height)));
  const decoded = lights.every((p) => p !== null);
  for (let i = 0; i < width * height; i += 1) {
    for (let c = 0; c < 3; c += 1) image.data[4 * i + c] = decoded ? lights[c][4 * i] : 96; // channel k = light k
    image.data[4 * i + 3] = 255;
  }
  const inside = (x, y) => x >= 0 && y >= 0 && x < width && y < height && mask[y * width + x] === 1;
  for (let y = 0; y < height; y += 1) {
    for (let x = 0; x < width; x += 1) {
      if (!inside(x, y)) continue;
      const i = 4 * (y * width + x);
      const edge = !inside(x - 1, y) || !inside(x + 1, y) || !inside(x, y - 1) || !inside(x, y + 1);
      const keep = edge ? 0 : 0.5;
      image.data[i] = Math.round(keep * image.data[i] + (1 - keep) * 255);
      image.data[i + 1] = Math.round(keep * image.data[i + 1]);
      image.data[i + 2] = Math.round(keep * image.data[i + 2] + (1 - keep) * 255);
    }
  }
  context.putImageData(image, 0, 0);
  context.lineWidth = 1;
  for (const component of answer.components) {
    const [x, y, w, h] = component.bbox;
    context.strokeStyle = colourOf(component.class_name, config);
    context.strokeRect(x - 0.5, y - 0.5, w + 1, h + 1); // just outside the box, so it never hides a defect pixel
  }
  canvas.setAttribute("aria-label", overlayLabel(answer, config));
  canvas.dataset.decoded = decoded ? "true" : "false";
}

function colourOf(className, config) {
  return className ? config.classes[className].colour : config.unclassified_colour;
}

function classLabel(className, config) {
  return className ? config.classes[className].label : "defect (no class)";
}

function overlayLabel(answer, config) {
  // What the canvas shows, in words: each region's class, so colour is never the only cue.
  if (!answer.defect) return "The layer; no defect outlined";
  const counts = {};
  for (const component of answer.components) {
    const label = classLabel(component.class_name, config);
    counts[label] = (counts[label] || 0) + 1;
  }
  const listed = Object.entries(counts).map(([label, n]) => `${n} ${label}`).join(", ");
  const regions = answer.components_total;
  const outlined = `The layer with ${regions} defect region${regions === 1 ? "" : "s"} outlined in magenta`;
  return answer.classes_available ? `${outlined}, each boxed in its class colour: ${listed}` : `${outlined}, each boxed`;
}

function fillLegend(panel, answer, config) {
  // One entry per class of the model (or one for regions without a class), swatch and name.
  const legend = $(".class-legend", panel);
  legend.replaceChildren();
  const names = answer.classes_available ? answer.class_summary.map((c) => c.name) : [null];
  for (const name of names) {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.borderColor = colourOf(name, config);
    swatch.setAttribute("aria-hidden", "true");
    item.append(swatch, classLabel(name, config));
    item.dataset.class = name || "";
    legend.append(item);
  }
}

function fillClassTable(panel, answer, config) {
  // Regions and area per class, the classes the request ignored marked so.
  const table = $(".class-table", panel);
  table.hidden = !answer.classes_available;
  const body = $("tbody", table);
  body.replaceChildren();
  for (const c of answer.class_summary) {
    const row = document.createElement("tr");
    row.dataset.class = c.name;
    const area = c.area_mm2 === null ? `${c.area_px} px` : `${c.area_px} px (${c.area_mm2.toFixed(3)} mm²)`;
    const cells = [classLabel(c.name, config) + (c.counted ? "" : " (ignored)"), String(c.components), area];
    for (const [k, text] of cells.entries()) {
      const cell = document.createElement(k === 0 ? "th" : "td");
      if (k === 0) cell.scope = "row";
      cell.textContent = text;
      row.append(cell);
    }
    body.append(row);
  }
}

function decisionText(answer) {
  return answer.defect ? "Fail: defects found" : "Pass: no defects found";
}

function doubtText(reasons) {
  return `This layer is unlike the layers the model was trained on: ${reasons.join("; ")}. Check the camera and lights before trusting the result.`;
}

function familiarText(answer) {
  if (!answer.familiarity.familiar) return "No: check the camera and lights before trusting the result";
  return answer.familiarity.statistics_checked
    ? "Yes"
    : "Yes, as far as checked (this model predates the exposure and contrast checks; only the flagged share is judged)";
}

function fillSummary(panel, answer, latency, labels) {
  const fields = {
    decision: answer.defect ? "Fail (defect found)" : "Pass (no defect)",
    max_confidence: answer.max_confidence.toFixed(3),
    defect_area_pct: `${answer.defect_area_pct.toFixed(2)} % (${answer.defect_area_px} px${answer.defect_area_mm2 === null ? "" : `, ${answer.defect_area_mm2.toFixed(3)} mm²`})`,
    bbox: answer.bbox ? answer.bbox.join(", ") + (answer.bbox_mm ? ` px; ${answer.bbox_mm.map((v) => v.toFixed(2)).join(", ")} mm` : " px") : "none",
    components: String(answer.components_total),
    variant: `${labels[answer.model.variant] || answer.model.variant} (${answer.model.name}, version ${answer.model.version}, ${answer.model.backend})`,
    latency: `${Math.round(latency)} ms (model ${Math.round(answer.timing_ms.inference)} ms)`,
    familiar: familiarText(answer),
  };
  for (const [name, text] of Object.entries(fields)) $(`[data-field="${name}"]`, panel).textContent = text;
  const doubt = $(".doubt", panel);
  doubt.hidden = answer.familiarity.familiar;
  doubt.textContent = doubt.hidden ? "" : doubtText(answer.familiarity.reasons);
}

function maskIou(a, b) {
  let both = 0;
  let either = 0;
  for (let i = 0; i < a.length; i += 1) {
    both += a[i] & b[i];
    either += a[i] | b[i];
  }
  return either === 0 ? 1 : both / either;
}

async function inspect(event) {
  event.preventDefault();
  const verdict = $("#verdict");
  const error = $("#error");
  const button = $("#submit");
  error.textContent = "";
  verdict.textContent = "";
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    const files = chosenFiles();
    const config = await serviceConfig();
    const choice = $('input[name="variant"]:checked').value;
    const variants = choice === "both" ? Object.keys(config.models) : [choice];
    verdict.textContent = "Inspecting the layer...";
    const results = [];
    for (const variant of variants) {
      results.push({ variant, ...(await predict(config.models[variant], files)) });
    }
    const panels = $("#panels");
    panels.replaceChildren();
    const masks = [];
    for (const { variant, answer, latency } of results) {
      const panel = $("#panel-template").content.firstElementChild.cloneNode(true);
      panel.dataset.variant = variant;
      $(".panel-title", panel).textContent = config.labels[variant];
      fillSummary(panel, answer, latency, config.labels);
      fillLegend(panel, answer, config);
      fillClassTable(panel, answer, config);
      panels.append(panel);
      const mask = await maskOf(answer);
      masks.push(mask);
      await drawOverlay($("canvas", panel), files, answer, mask, config);
    }
    const agreement = $("#agreement");
    if (results.length === 2) {
      const [a, b] = results.map((r) => r.answer);
      const same = a.defect === b.defect;
      agreement.textContent = `The variants ${same ? "agree" : "disagree"} on the decision; mask IoU between them ${maskIou(masks[0], masks[1]).toFixed(3)}.`;
    } else {
      agreement.textContent = "";
    }
    $("#results").hidden = false;
    const reasons = [...new Set(results.flatMap(({ answer }) => answer.familiarity.reasons))];
    verdict.textContent = [
      ...results.map(({ variant, answer }) => `${decisionText(answer)} (${config.labels[variant]}${answer.defect ? `, ${answer.defect_area_pct.toFixed(2)} % of the layer` : ""}).`),
      ...(reasons.length ? [doubtText(reasons)] : []),
    ].join(" ");
  } catch (err) {
    verdict.textContent = "";
    error.textContent = err.message;
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#inspect").addEventListener("submit", inspect);
});
