// Transfer Studio web demo: loads the bundle's TF.js graph model (../tfjs/ by default) and labels.txt, and
// classifies a picked photo or a webcam frame, showing the top classes as bars.
// The model takes raw RGB pixels 0..255 resized to its input size (bilinear): no normalisation. A photo is
// resized whole, as training saw it; a webcam frame is first cropped to its centre square (as MediaPipe's image
// classifier does), so it is not squashed. The webcam is classified continuously (Pause stops it).
// URL options: ?model=../tfjs-float16/ (another graph-model folder of the bundle), ?labels=../labels.txt,
// ?manifest=../manifest.json (its confidence_threshold marks a result below it "not sure"),
// ?embedded=1 (only the result; used by the Transfer Studio app), ?embedded=webcam (the webcam, started at once, and
// its result: the app's live mode), #image=<data: URL> (classify that image; a new
// fragment classifies the new image with the model already loaded, and the old result is cleared first, so a
// result is never shown beside another image than the one it is for).
(function () {
  'use strict';
  const params = new URLSearchParams(location.search);
  const modelUrl = params.get('model') || '../tfjs/';
  const labelsUrl = params.get('labels') || '../labels.txt';
  const $ = id => document.getElementById(id);
  let model = null;
  let labels = [];
  let size = 224;
  let threshold = null;  // manifest.json's confidence_threshold: below it the model is not sure (maybe none of these)
  let stream = null;
  let latest = 0;  // the newest image asked for: an older classification finishing late is not drawn

  if (params.get('embedded')) document.body.classList.add('embedded');
  if (params.get('embedded') === 'webcam') document.body.classList.add('webcam');

  function show(text) { $('status').textContent = text; }

  function bar(name, p) {
    // Class names are folder names: set as text, never as markup.
    const row = document.createElement('div');
    row.className = 'bar';
    const label = document.createElement('span');
    label.className = 'name';
    label.textContent = name;
    const track = document.createElement('span');
    track.className = 'track';
    const fill = document.createElement('span');
    fill.className = 'fill';
    fill.style.width = (p * 100).toFixed(1) + '%';
    track.appendChild(fill);
    const pct = document.createElement('span');
    pct.className = 'pct';
    pct.textContent = (p * 100).toFixed(1) + '%';
    row.append(label, track, pct);
    return row;
  }

  function clear() {
    $('top').textContent = '';
    $('bars').replaceChildren();
    delete $('out').dataset.probs;
    $('out').dataset.top1 = '';
  }

  // Classifies an <img>, <video> or <canvas>: resized to the model's size, raw 0..255 pixels.
  async function classify(source, ticket, crop = false) {
    const x = tf.tidy(() => {
      let pixels = tf.browser.fromPixels(source);
      if (crop && pixels.shape[0] !== pixels.shape[1]) {
        const side = Math.min(pixels.shape[0], pixels.shape[1]);
        const top = Math.floor((pixels.shape[0] - side) / 2);
        const left = Math.floor((pixels.shape[1] - side) / 2);
        pixels = pixels.slice([top, left, 0], [side, side, 3]);
      }
      if (pixels.shape[0] !== size || pixels.shape[1] !== size) {
        pixels = tf.image.resizeBilinear(pixels, [size, size]);
      }
      return pixels.toFloat().expandDims(0);
    });
    const y = model.predict(x);
    const probs = Array.from(await y.data());
    x.dispose();
    y.dispose();
    if (ticket !== undefined && ticket !== latest) return probs;  // another image was asked for meanwhile
    const order = probs.map((p, i) => i).sort((a, b) => probs[b] - probs[a]);
    const prefix = params.get('embedded') ? 'Browser (TF.js, ' + tf.getBackend() + '): ' : '';
    const unsure = threshold !== null && probs[order[0]] < threshold;
    $('top').textContent = prefix + labels[order[0]] + ' (' + (probs[order[0]] * 100).toFixed(1) + '%)' +
      (unsure ? ': not sure, maybe none of these (below the confidence threshold, ' +
        (threshold * 100).toFixed(1) + '%; the model only knows its classes)' : '');
    $('out').dataset.uncertain = String(unsure);
    $('bars').replaceChildren(...order.slice(0, 5).map(i => bar(labels[i], probs[i])));
    $('out').dataset.probs = JSON.stringify(probs);
    $('out').dataset.top1 = labels[order[0]];
    show('TF.js ' + tf.getBackend() + ' backend, in this browser.');
    return probs;
  }

  async function showImage(url) {
    const ticket = ++latest;
    clear();
    show('Classifying...');
    const img = $('photo');
    img.src = url;
    img.hidden = false;
    await img.decode();
    return classify(img, ticket);
  }

  // The image the page's fragment names (the app changes only the fragment for each new photo).
  async function fromFragment() {
    // Not URLSearchParams: it would turn the '+' of base64 into spaces.
    const image = location.hash.match(/^#image=(.+)$/);
    if (image && model) await showImage(decodeURIComponent(image[1]));
  }

  async function start() {
    await tf.ready();
    model = await tf.loadGraphModel(modelUrl + 'model.json');
    labels = (await (await fetch(labelsUrl)).text()).split('\n').filter(line => line.length > 0);
    try {  // optional: a page copied without the manifest still classifies, with no "not sure"
      const manifest = await (await fetch(params.get('manifest') || '../manifest.json')).json();
      if (typeof manifest.confidence_threshold === 'number') threshold = manifest.confidence_threshold;
    } catch (e) { threshold = null; }
    const shape = model.inputs[0].shape;  // [-1, size, size, 3]
    if (shape && shape[1] > 0) size = shape[1];
    show('Model loaded (' + labels.length + ' classes, ' + size + 'x' + size + ' input). Choose a photo or use the webcam.');
    window.addEventListener('hashchange', () => fromFragment().catch(e => show('Classification failed: ' + e.message)));
    await fromFragment();
  }

  $('file').addEventListener('change', async event => {
    const file = event.target.files[0];
    if (!file || !model) return;
    const url = URL.createObjectURL(file);
    try {
      await showImage(url);
    } catch (e) {
      show('Could not read ' + file.name + ' as an image: ' + e.message);
    } finally {
      URL.revokeObjectURL(url);
    }
  });

  let live = false;

  // Classifies the webcam's frames one after the other (the next once the previous is drawn) until paused.
  async function watch() {
    const video = $('video');
    while (live && stream) {
      const ticket = ++latest;
      await classify(video, ticket, true);
      await new Promise(resolve => requestAnimationFrame(resolve));
    }
  }

  async function startWebcam() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      show('This browser gives no camera access here (it needs https or localhost).');
      return;
    }
    try {
      stream = stream || await navigator.mediaDevices.getUserMedia({ video: true });
      const video = $('video');
      video.srcObject = stream;
      video.hidden = false;
      $('photo').hidden = true;
      $('snap').hidden = false;
      $('snap').textContent = 'Pause';
      await video.play();
      live = true;
      watch().catch(e => show('Classification failed: ' + e.message));
    } catch (e) {
      show('The webcam could not start: ' + e.message);
    }
  }

  $('camera').addEventListener('click', startWebcam);

  $('snap').addEventListener('click', () => {
    live = !live;
    $('snap').textContent = live ? 'Pause' : 'Resume';
    if (live) watch().catch(e => show('Classification failed: ' + e.message));
  });

  const ready = start().then(() => {
    if (document.body.classList.contains('webcam')) return startWebcam();
  }).catch(e => show('The model could not load: ' + e.message));
  window.transferStudioDemo = { classify, showImage, ready };
})();
