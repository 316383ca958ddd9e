"""Training throughput (seconds of audio per wall second) of the recipe's teacher and baseline.

Ours: ``LSTMCTC`` on padded batches (the BiLSTM's backward direction runs on a length-aware
reversal). Peer: the same sizes built from ``torch.nn.LSTM(bidirectional=...)`` over packed
sequences, the usual way to keep padding out of a BiLSTM. Same random batches (lengths drawn
like synth-en's, 1.5-7 s), forward + CTC + backward + AdamW step, threads pinned, median of
--repeats. Runs on CUDA too when it is there (--device). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class PackedPeer:
    """torch.nn.LSTM over packed sequences, with the same stacking and output layer."""

    def __init__(self, cfg, device):
        import torch

        self.cfg = cfg
        self.lstm = torch.nn.LSTM(cfg.input_dim * cfg.stack, cfg.hidden, cfg.layers, batch_first=True,
                                  bidirectional=cfg.bidirectional, dropout=cfg.dropout).to(device)
        self.out = torch.nn.Linear(cfg.hidden * (2 if cfg.bidirectional else 1), cfg.vocab_size).to(device)

    def parameters(self):
        return list(self.lstm.parameters()) + list(self.out.parameters())

    def __call__(self, feats, lengths):
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        b, t, d = feats.shape
        k = self.cfg.stack
        x = feats[:, : t // k * k].reshape(b, t // k, d * k)
        ol = lengths // k
        packed = pack_padded_sequence(x, ol.cpu(), batch_first=True, enforce_sorted=False)
        h, _ = self.lstm(packed)
        h, _ = pad_packed_sequence(h, batch_first=True, total_length=x.shape[1])
        return self.out(h).log_softmax(-1), ol


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from speechkd.config import from_dict, load_yaml
    from speechkd.models import ModelConfig, build_model

    torch.set_num_threads(a.threads)
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    stages = load_yaml(Path(__file__).resolve().parents[1] / "pipelines" / "default" / "recipe.yaml")["stages"]
    g = torch.Generator().manual_seed(0)
    n_batches = 2 if a.quick else 6
    max_frames = stages["teacher"].get("max_frames", 10000) * (1 if device.type == "cpu" else 8)
    batches = []
    for _ in range(n_batches):
        lens = torch.randint(150, 700, (256,), generator=g)
        per = max(1, int(max_frames // int(lens.max())))
        lens = lens[:per].sort(descending=True).values
        feats = torch.randn(len(lens), int(lens.max()), 80, generator=g)
        tl = torch.clamp(lens // 8, min=1)
        batches.append((feats, lens, torch.randint(1, 29, (int(tl.sum()),), generator=g), tl))

    def run(model, params) -> float:
        opt = torch.optim.AdamW(params, 1e-3)
        sec = 0.0
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for feats, lens, tg, tl in batches:
            f, l = feats.to(device), lens.to(device)
            lp, ol = model(f, l)
            loss = F.ctc_loss(lp.transpose(0, 1), tg.to(device), ol, tl.to(device), zero_infinity=True)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sec += float(lens.sum()) / 100
        if device.type == "cuda":
            torch.cuda.synchronize()
        return sec / (time.perf_counter() - t0)

    res: dict = {"device": str(device), "threads": a.threads, "repeats": a.repeats}
    for name in ("teacher", "baseline"):
        mcfg = from_dict(ModelConfig, {**stages[name]["model"], "dropout": 0.0})
        ours = build_model(mcfg).to(device)
        peer = PackedPeer(mcfg, device)
        run(ours, list(ours.parameters()))  # warm-up
        run(peer, peer.parameters())
        o = statistics.median(run(ours, list(ours.parameters())) for _ in range(a.repeats))
        p = statistics.median(run(peer, peer.parameters()) for _ in range(a.repeats))
        res[f"{name}_audio_s_per_s"] = round(o, 1)
        res[f"{name}_packed_peer_audio_s_per_s"] = round(p, 1)
        res[f"{name}_ratio_vs_packed"] = round(o / p, 2)
        print(f"{name:9s} ours {o:9.1f} s audio/s   packed nn.LSTM {p:9.1f} s audio/s   ratio {o / p:.2f}", flush=True)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
