"""Cost of quantization-aware training: one training step (forward + backward + AdamW) of the default
student (unidirectional 3 x 256, stack 3) with float weights against the same step with fake-quantized
int8 weights (speechkd.quant.fake), same batch, one process, medians of --repeats.

On a CUDA machine it also times both on the GPU and checks that the fake-quantized forward on the GPU
(cuDNN LSTM) equals the CPU one. Prints one JSON line last: ``qat_step_overhead_cpu`` (fake-quant step
time / float step time) and, with CUDA, ``qat_step_overhead_cuda`` and ``cuda_vs_cpu_max_abs_diff``.

    python benchmarks/qat_step.py [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a 2 x 64 model, small batch")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--frames", type=int, default=600, help="input frames per utterance (10 ms)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    import torch

    from speechkd.models import ModelConfig, build_model
    from speechkd.quant.fake import fake_quantize

    from speechkd.utils import set_threads
    set_threads(a.threads)  # numba first: its pool would reset torch's threads
    layers, hidden = (2, 64) if a.quick else (3, 256)
    if a.quick:
        a.batch, a.frames, a.repeats = 4, 150, 3
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=29, hidden=hidden, layers=layers, bidirectional=False, stack=3, dropout=0.0)
    feats = torch.randn(a.batch, a.frames, 80)
    lens = torch.full((a.batch,), a.frames)

    def step_fn(model, opt, x, n):
        def run():
            opt.zero_grad(set_to_none=True)
            lp, _ = model(x, n)
            lp.logsumexp(-1).sum().neg().backward()  # any scalar of the output; the step's cost is what counts
            opt.step()
        return run

    res = {"model": f"{layers}x{hidden} unidirectional", "batch": a.batch, "frames": a.frames, "threads": a.threads,
           "repeats": a.repeats}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    outs = {}
    for dev in devices:
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
        times = {}
        runs = {}
        for fq in (False, True):
            torch.manual_seed(0)
            m = build_model(cfg).to(dev)
            if fq:
                fake_quantize(m)  # from outside: the model's LSTMs and output layer see int8-grid weights
            opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
            runs[fq] = step_fn(m, opt, feats.to(dev), lens.to(dev))
            runs[fq]()  # warm-up
            times[fq] = []
        for _ in range(a.repeats):
            for fq in (False, True):  # interleaved
                sync()
                t0 = time.perf_counter()
                runs[fq]()
                sync()
                times[fq].append(time.perf_counter() - t0)
        f, q = statistics.median(times[False]), statistics.median(times[True])
        res[f"step_s_{dev}_float"] = round(f, 5)
        res[f"step_s_{dev}_fake_quant"] = round(q, 5)
        res[f"qat_step_overhead_{dev}"] = round(q / f, 3)
        print(f"[{dev}] step float {f * 1e3:.1f} ms, fake-quant {q * 1e3:.1f} ms ({q / f:.2f}x)", flush=True)
        torch.manual_seed(0)
        m = fake_quantize(build_model(cfg).to(dev).eval())
        with torch.no_grad():
            outs[dev] = m(feats[:2].to(dev), lens[:2].to(dev))[0].float().cpu()
    if "cuda" in outs:
        res["cuda_device"] = torch.cuda.get_device_name()
        res["cuda_vs_cpu_max_abs_diff"] = float(f"{(outs['cuda'] - outs['cpu']).abs().max().item():.3g}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
