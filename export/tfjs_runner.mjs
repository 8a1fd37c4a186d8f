// Runs a TF.js graph model from disk in Node with @tensorflow/tfjs (the same library a web page uses).
// Usage: node export/tfjs_runner.mjs INPUT.u8 N SIZE OUT.json BACKEND LATENCY_N BATCH MODEL_DIR [MODEL_DIR ...]
// INPUT.u8 holds N raw RGB images (uint8, NHWC, SIZE x SIZE), read from the file BATCH images at a time and fed as
// float32 0..255. Each model (one Node start and one backend set-up for all of them) gets three warm-up calls, LATENCY_N
// timed calls at batch 1 (what a page makes) and the probabilities of all N images at batch BATCH.
// OUT.json gets {"backend", "fallback", "models": [{"dir", "probs", "latency_ms", "seconds"}, ...]}.
// BACKEND is "wasm" (default: @tensorflow/tfjs-backend-wasm, its .wasm files ship in the npm package) or
// "cpu" (pure JS, ~15x slower). When wasm cannot start, the CPU backend runs and "fallback" says why.
import * as tf from '@tensorflow/tfjs';
import fs from 'node:fs';
import path from 'node:path';

function fileHandler(dir) {
  // A small IOHandler: model.json plus its weight shards, read from disk.
  return {
    async load() {
      const modelJSON = JSON.parse(fs.readFileSync(path.join(dir, 'model.json'), 'utf8'));
      const weightSpecs = [];
      const buffers = [];
      for (const group of modelJSON.weightsManifest) {
        weightSpecs.push(...group.weights);
        for (const p of group.paths) buffers.push(fs.readFileSync(path.join(dir, p)));
      }
      const all = Buffer.concat(buffers);
      return {
        modelTopology: modelJSON.modelTopology,
        format: modelJSON.format,
        generatedBy: modelJSON.generatedBy,
        convertedBy: modelJSON.convertedBy,
        signature: modelJSON.signature,
        userDefinedMetadata: modelJSON.userDefinedMetadata,
        weightSpecs,
        weightData: all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength),
      };
    },
  };
}

async function chooseBackend(wanted) {
  if (wanted === 'wasm') {
    try {
      await import('@tensorflow/tfjs-backend-wasm');
      if (await tf.setBackend('wasm')) return null;
      return 'the wasm backend did not initialise';
    } catch (e) {
      return `the wasm backend could not load (${e.message})`;
    }
  }
  return null;
}

const [inputPath, nText, sizeText, outPath, wanted = 'wasm', latencyText = '20', batchText = '32', ...dirs] =
  process.argv.slice(2);
const n = Number(nText);
const size = Number(sizeText);
const latencyImages = Math.min(Number(latencyText), n);
const batch = Number(batchText);
const fallback = await chooseBackend(wanted);
if (fallback || wanted === 'cpu') await tf.setBackend('cpu');
await tf.ready();
const per = size * size * 3;
const fd = fs.openSync(inputPath, 'r');

function images(start, count) {
  // `count` images from `start` as float32 0..255 (read from the file a batch at a time: memory stays at one batch)
  const bytes = new Uint8Array(per * count);
  fs.readSync(fd, bytes, 0, bytes.length, start * per);
  return tf.tensor4d(Float32Array.from(bytes), [count, size, size, 3], 'float32');
}

async function run(dir) {
  const t0 = performance.now();
  const model = await tf.loadGraphModel(fileHandler(dir));
  for (let i = 0; i < 3; i++) {  // the first calls of a model run slower (measured 18 vs 10 ms on 20 calls after one)
    const warm = model.predict(tf.zeros([1, size, size, 3]));
    await warm.data();
    warm.dispose();
  }
  const latency = [];
  for (let i = 0; i < latencyImages; i++) {
    const x = images(i, 1);
    const t = performance.now();
    const y = model.predict(x);
    await y.data();
    latency.push(performance.now() - t);
    x.dispose();
    y.dispose();
  }
  const probs = [];
  for (let i = 0; i < n; i += batch) {
    const count = Math.min(batch, n - i);
    const x = images(i, count);
    const y = model.predict(x);
    const data = await y.data();
    const k = data.length / count;
    for (let j = 0; j < count; j++) probs.push(Array.from(data.subarray(j * k, (j + 1) * k)));
    x.dispose();
    y.dispose();
  }
  model.dispose();
  return { dir, probs, latency_ms: latency, seconds: (performance.now() - t0) / 1000 };
}

const models = [];
for (const dir of dirs) models.push(await run(dir));
fs.closeSync(fd);
fs.writeFileSync(outPath, JSON.stringify({ backend: tf.getBackend(), fallback, models }));
