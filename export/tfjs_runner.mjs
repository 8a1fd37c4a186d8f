// Runs a TF.js graph model from disk in Node with @tensorflow/tfjs (the same library a web page uses).
// Usage: node export/tfjs_runner.mjs MODEL_DIR INPUT.f32 N SIZE OUT.json
// INPUT.f32 holds N raw RGB images (float32 little-endian, 0..255, NHWC); OUT.json gets
// {"probs": [[...], ...], "latency_ms": [...]} with one forward pass per image (batch 1).
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

const [dir, inputPath, nText, sizeText, outPath] = process.argv.slice(2);
const n = Number(nText);
const size = Number(sizeText);
const raw = fs.readFileSync(inputPath);
const pixels = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
const per = size * size * 3;
const model = await tf.loadGraphModel(fileHandler(dir));
const warm = model.predict(tf.zeros([1, size, size, 3]));
await warm.data();
warm.dispose();
const probs = [];
const latency = [];
for (let i = 0; i < n; i++) {
  const x = tf.tensor4d(pixels.subarray(i * per, (i + 1) * per), [1, size, size, 3], 'float32');
  const t0 = performance.now();
  const y = model.predict(x);
  const data = await y.data();
  latency.push(performance.now() - t0);
  probs.push(Array.from(data));
  x.dispose();
  y.dispose();
}
fs.writeFileSync(outPath, JSON.stringify({ backend: tf.getBackend(), probs, latency_ms: latency }));
