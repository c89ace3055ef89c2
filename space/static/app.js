// The static Space: the model's ONNX graph runs in the visitor's browser with transformers.js; there is no server.
// `space.json`, written when the Space is published (space/folder.py), says which model, which graph and which pinned
// transformers.js to load, and what the model card reports.

const $ = (id) => document.getElementById(id);
const config = await (await fetch("space.json")).json();
const { env, pipeline } = await import(config.transformers_js);

env.allowLocalModels = false; // the model comes from its Hub repository, nothing else
env.remoteHost = config.hub;
if (config.onnxruntime_wasm) env.backends.onnx.wasm.wasmPaths = config.onnxruntime_wasm;

$("title").textContent = config.model_name;
$("summary").innerHTML = "";
const link = Object.assign(document.createElement("a"), { href: config.model_url, textContent: config.model_id });
$("summary").append(`${config.accuracy} — the ONNX graph of `, link, ", running in this page.");

// WebGPU where the browser has an adapter, else WebAssembly; a graph WebGPU cannot run falls back too.
async function loadClassifier() {
  const options = { dtype: config.dtype };
  if (navigator.gpu && (await navigator.gpu.requestAdapter().catch(() => null))) {
    try {
      return [await pipeline("image-classification", config.model_id, { ...options, device: "webgpu" }), "WebGPU"];
    } catch (error) {
      console.warn("WebGPU failed, using WebAssembly:", error);
    }
  }
  return [await pipeline("image-classification", config.model_id, { ...options, device: "wasm" }), "WebAssembly"];
}

const status = (text, isError = false) => {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
};

let classifier;
try {
  let backend;
  [classifier, backend] = await loadClassifier();
  $("runtime").textContent =
    `transformers.js ${env.version} on ${backend}, the ${config.dtype} graph ${config.onnx_file} ` +
    `of ${config.model_id}.`;
  status("Choose an image, or click an example.");
} catch (error) {
  status(`The model could not be loaded: ${error.message ?? error}`, true);
  throw error;
}

function showTop(top) {
  const body = $("top5").querySelector("tbody");
  body.replaceChildren(
    ...top.map(({ label, score }) => {
      const row = document.createElement("tr");
      row.append(
        Object.assign(document.createElement("td"), { textContent: label }),
        Object.assign(document.createElement("td"), { className: "score", textContent: score.toFixed(4) }),
      );
      return row;
    }),
  );
  $("top5").hidden = false;
}

// Classifies the image at `url`; `name` says what it is in a message. Anything the browser cannot decode as an image
// gets a message, never an empty table.
async function classify(url, name) {
  $("top5").hidden = true;
  status(`Classifying ${name}…`);
  const preview = $("preview");
  const decoded = await new Promise((resolve) => {
    preview.onload = () => resolve(true);
    preview.onerror = () => resolve(false);
    preview.src = url;
  });
  if (!decoded) {
    preview.hidden = true;
    status(`${name} is not an image this browser can read: choose a PNG, JPEG, GIF or WebP file.`, true);
    window.lastAnswer = { error: "not an image", name };
    return;
  }
  preview.hidden = false;
  try {
    const top = await classifier(url, { top_k: 5 });
    showTop(top);
    status(`Top 5 for ${name}.`);
    window.lastAnswer = { name, top };
  } catch (error) {
    status(`${name} could not be classified: ${error.message ?? error}`, true);
    window.lastAnswer = { error: String(error), name };
  }
}

for (const example of config.examples) {
  const button = document.createElement("button");
  button.title = `an example from the test split: ${example.label}`;
  button.append(Object.assign(document.createElement("img"), { src: example.file, alt: example.label }));
  button.onclick = () => classify(example.file, `the example ${example.file} (${example.label})`);
  $("examples").append(button);
}

const classifyFile = (file) => file && classify(URL.createObjectURL(file), file.name);
$("file").onchange = (event) => classifyFile(event.target.files[0]);
const drop = $("drop");
drop.ondragover = (event) => {
  event.preventDefault();
  drop.classList.add("over");
};
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  classifyFile(event.dataTransfer.files[0]);
};

window.classify = classify; // for tests and the console
window.ready = true;
