// Runs a TF.js graph model from disk in Node with @tensorflow/tfjs (the same library a web page uses).
// Usage: node export/tfjs_runner.mjs MODEL_DIR INPUT.u8 N SIZE OUT.json [BACKEND]
// INPUT.u8 holds N raw RGB images (uint8, NHWC, SIZE x SIZE); each is read from the file on its own and fed
// as float32 0..255 (memory stays at one image). OUT.json gets {"backend", "fallback", "probs", "latency_ms"}
// with one forward pass per image (batch 1).
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

const [dir, inputPath, nText, sizeText, outPath, wanted = 'wasm'] = process.argv.slice(2);
const n = Number(nText);
const size = Number(sizeText);
const fallback = await chooseBackend(wanted);
if (fallback || wanted === 'cpu') await tf.setBackend('cpu');
await tf.ready();
const per = size * size * 3;
const model = await tf.loadGraphModel(fileHandler(dir));
const warm = model.predict(tf.zeros([1, size, size, 3]));
await warm.data();
warm.dispose();
const fd = fs.openSync(inputPath, 'r');
const bytes = new Uint8Array(per);
const probs = [];
const latency = [];
for (let i = 0; i < n; i++) {
  fs.readSync(fd, bytes, 0, per, i * per);
  const x = tf.tensor4d(Float32Array.from(bytes), [1, size, size, 3], 'float32');
  const t0 = performance.now();
  const y = model.predict(x);
  const data = await y.data();
  latency.push(performance.now() - t0);
  probs.push(Array.from(data));
  x.dispose();
  y.dispose();
}
fs.closeSync(fd);
fs.writeFileSync(outPath, JSON.stringify({ backend: tf.getBackend(), fallback, probs, latency_ms: latency }));
