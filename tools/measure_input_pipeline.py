"""Input-pipeline images/s of the imagenet FileBatchStream on this machine's CPU.

    python tools/measure_input_pipeline.py [DATA_DIR]   (default /tmp/pipe/data; generated once)

Generates 512 training + 128 validation JPEGs of ImageNet's median size (500x375, quality 90)
in 8 class folders under DATA_DIR/imagenet, then times the training stream (1 and 2 loader
workers, batch 64, 6 batches after a warm-up batch) and one evaluation pass. Prints JSON.
"""
import os, sys, time, json
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import numpy as np, torch
from PIL import Image
from pathlib import Path
data = sys.argv[1] if len(sys.argv) > 1 else "/tmp/pipe/data"
root = Path(data) / "imagenet"
rng = np.random.default_rng(0)
if not root.exists():
    for split, n in (("train", 64), ("val", 16)):
        for c in range(8):
            d = root / split / f"n{c:08d}"; d.mkdir(parents=True)
            for i in range(n):
                # ImageNet-like: 500x375 (the median size), smooth content + noise, quality 90
                yy, xx = np.mgrid[0:375, 0:500]
                img = np.stack([(xx * (c + 1) + yy) % 256, (yy * 2 + i) % 256, (xx + yy * 3) % 256], -1)
                img = (img + rng.normal(0, 20, img.shape)).clip(0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.JPEG", quality=90)
os.environ["COMHE_DATA"] = data
from benchmark.data import datasets
from benchmark.config import load_protocol
from benchmark.data.files import FileBatchStream, eval_batches
cfg = load_protocol("imagenet_resnet").data
ds = datasets.load("imagenet", cfg)
sizes = [os.path.getsize(p) for p, _ in ds.train_samples]
out = {"mean_jpeg_kb": sum(sizes) / len(sizes) / 1024, "threads": torch.get_num_threads()}
for workers in (1, 2):
    s = FileBatchStream(ds, 64, 0, cfg, torch.device("cpu"), 0, 1, workers)
    s.next()  # warm-up: workers start
    t = time.perf_counter(); k = 6
    for _ in range(k):
        s.next()
    out[f"train_w{workers}"] = k * 64 / (time.perf_counter() - t)
    del s
of = eval_batches(ds, cfg, torch.device("cpu"), 2)
t = time.perf_counter(); n = sum(x.shape[0] for x, _ in of(0, 128)); out["eval_w2"] = n / (time.perf_counter() - t)
print(json.dumps(out))
