"""speechkd's CTC kernels against peer decoders and aligners, same inputs, one process.

Posteriors are realistic: the default recipe's trained teacher run over synth-en utterances
(concatenated to ~500 output frames; V = 29), and the same posteriors mapped onto a 500-token
vocabulary (each character to a random id with 98% of its mass, the rest spread thin). Without
a trained teacher it falls back to synthetic peaky posteriors and says so.

Contenders, threads pinned (torch and numba to --threads), medians of --repeats:
  * prefix beam search vs pyctcdecode (no LM, same beam), 1-best agreement;
  * prefix beam search vs torchaudio ``ctc_decoder`` (flashlight-text, lexicon-free, no LM, same beam);
  * Viterbi vs ``torchaudio.functional.forced_align`` (one utterance at a time), identical paths;
  * forward-backward occupancy vs ``ctc_loss`` backward (batched), max |difference|;
  * top-k vs ``torch.topk`` + softmax, identical ids.
On a CUDA machine it also times the CUDA kernels against the CPU ones and torchaudio's
``cuda_ctc_decoder``. The last line printed is one JSON object of ratios (peer time / our time).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _median_time(fn, repeats: int, sync=None) -> float:
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def teacher_posteriors(n_utts: int, frames: int):
    """(log_probs (B, T, 29) float32, lengths, source description)."""
    import numpy as np
    import torch

    model_path = REPO / "exp" / "default" / "teacher" / "model.safetensors"
    feats_manifest = REPO / "exp" / "default" / "featurize" / "train.jsonl"
    if model_path.exists() and feats_manifest.exists():
        from speechkd.data.dataset import FeatureDataset
        from speechkd.models.bundle import load_bundle

        bundle = load_bundle(model_path)
        model = bundle.model
        ds = FeatureDataset(feats_manifest, bundle.tokenizer)
        k = model.cfg.stack
        chunks, i = [], 0
        while len(chunks) < n_utts:
            need, parts = frames * k, []
            while sum(len(p) for p in parts) < need:
                parts.append(np.asarray(ds[i % len(ds)][1]))
                i += 1
            chunks.append(np.concatenate(parts)[:need])
        out = []
        with torch.no_grad():
            for j in range(0, n_utts, 32):
                x = torch.from_numpy(np.stack(chunks[j : j + 32]))
                lp, _ = model(x, torch.full((len(x),), x.shape[1]))
                out.append(lp)
        lp = torch.cat(out)[:, :frames].contiguous()
        return lp, torch.full((n_utts,), frames), f"teacher {model_path.relative_to(REPO)}"
    g = torch.Generator().manual_seed(0)
    lp = torch.full((n_utts, frames, 29), math.log(0.02 / 28))
    lp[:, :, 0] = math.log(0.98)
    tok = torch.randint(1, 29, (n_utts, frames), generator=g)
    spike = torch.rand(n_utts, frames, generator=g) < 0.3
    lp[spike] = math.log(0.02 / 28)
    lp[spike.nonzero(as_tuple=True) + (tok[spike],)] = math.log(0.98)
    return lp.log_softmax(-1), torch.full((n_utts,), frames), "synthetic peaky (no trained teacher found)"


def widen(lp29, vocab: int, seed: int = 0):
    """Map 29-token posteriors onto ``vocab`` tokens (98% of each token's mass on its image)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    B, T, V = lp29.shape
    image = torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(vocab - 1, generator=g)[: V - 1]])
    noise = torch.rand(B, T, vocab, generator=g) + 0.1
    p = 0.02 * noise / noise.sum(-1, keepdim=True)
    p.scatter_add_(2, image.expand(B, T, V), 0.98 * lp29.exp())
    return (p / p.sum(-1, keepdim=True)).log().float().contiguous()


def run_size(lp, lens, labels, a, res: dict, tag: str) -> None:
    import numpy as np
    import torch

    import speechkd.kernels as K

    B, T, V = lp.shape
    lp_np = lp.numpy()
    beam = a.beam
    n_peer = min(B, a.peer_utts)
    ours_kw = dict(beam=beam, nbest=1, token_min_logp=-5.0)

    def decode_ours(n):
        return K.prefix_beam_search(lp[:n], lens[:n], **ours_kw)

    decode_ours(2)  # JIT warm-up
    t_ours_full = _median_time(lambda: decode_ours(B), a.repeats)
    if a.cuda_only:
        ours = decode_ours(B)
        tg_list = [ours.hypotheses(b)[0][0] or [1] for b in range(B)]
        tg = torch.zeros(B, max(len(t) for t in tg_list), dtype=torch.long)
        for b, t in enumerate(tg_list):
            tg[b, : len(t)] = torch.tensor(t)
        cuda_size(lp, lens, tg, torch.tensor([len(t) for t in tg_list]), a, res, tag, t_ours_full, labels)
        return
    res[f"{tag}_beam_ours_s"] = round(t_ours_full, 4)
    ours = decode_ours(B)
    ours_text = ["".join(labels[t] for t in ours.hypotheses(b)[0][0]).strip() for b in range(B)]

    # pyctcdecode (same beam, its own default pruning, no LM)
    try:
        import pyctcdecode

        pl = ["" if i == 0 else (" " if labels[i] == "|" else labels[i]) for i in range(V)]
        dec = pyctcdecode.build_ctcdecoder(pl)
        t_peer = _median_time(lambda: [dec.decode(lp_np[b], beam_width=beam, token_min_logp=-5.0) for b in range(n_peer)],
                              max(1, a.repeats // 2))
        t_ours = _median_time(lambda: decode_ours(n_peer), a.repeats)
        peer = [" ".join(dec.decode(lp_np[b], beam_width=beam, token_min_logp=-5.0).split()) for b in range(n_peer)]
        mine = [" ".join(ours_text[b].replace("|", " ").split()) for b in range(n_peer)]
        agree = np.mean([p == m for p, m in zip(peer, mine)])
        import jiwer

        word_agree = 1 - jiwer.wer(peer, mine)
        # which 1-best is more probable under the model? log P(text | x) by forward-backward
        if V == 29:
            from speechkd.text.tokenizer import CharTokenizer

            tk = CharTokenizer()
            ll = lambda b, text: float(K.ctc_occupancy(lp[b : b + 1], torch.tensor([tk.encode(text) or [1]]))[1][0])
            ge = np.mean([ll(b, m) >= ll(b, p) - 1e-6 for b, (p, m) in enumerate(zip(peer, mine))])
            res[f"{tag}_beam_ours_at_least_as_likely_as_pyctcdecode"] = round(float(ge), 4)
        res[f"{tag}_beam_vs_pyctcdecode_ratio"] = round(t_peer / t_ours, 1)
        res[f"{tag}_beam_vs_pyctcdecode_agree"] = round(float(agree), 4)
        res[f"{tag}_beam_vs_pyctcdecode_word_agree"] = round(float(word_agree), 4)
        print(f"[{tag}] beam vs pyctcdecode: {t_peer / t_ours:8.1f}x  1-best agree {agree:.2%}, words {word_agree:.2%} "
              f"({n_peer} utts)", flush=True)
    except ImportError as e:
        print(f"[{tag}] pyctcdecode not installed ({e}); run `make bench-deps`")

    # torchaudio flashlight-text decoder, lexicon-free, same beam
    try:
        from torchaudio.models.decoder import ctc_decoder

        toks = ["<blk>"] + [("|" if labels[i] == "|" else f"t{i}") for i in range(1, V)]
        if "|" not in toks:
            toks[1] = "|"
        fl = ctc_decoder(lexicon=None, tokens=toks, lm=None, nbest=1, beam_size=beam, beam_size_token=V,
                         beam_threshold=1e9, blank_token="<blk>", sil_token="|", log_add=True)
        t_peer = _median_time(lambda: fl(lp, lens), a.repeats)
        hyp = fl(lp, lens)
        agree = np.mean([[t for t in h[0].tokens.tolist() if t != toks.index("|")] ==
                         [t for t in ours.hypotheses(b)[0][0] if t != toks.index("|")] for b, h in enumerate(hyp)])
        res[f"{tag}_beam_vs_torchaudio_ratio"] = round(t_peer / t_ours_full, 2)
        res[f"{tag}_beam_vs_torchaudio_agree"] = round(float(agree), 4)
        print(f"[{tag}] beam vs torchaudio ctc_decoder: {t_peer / t_ours_full:6.2f}x  agree {agree:.2%}", flush=True)
    except Exception as e:  # flashlight-text missing
        print(f"[{tag}] torchaudio ctc_decoder unavailable ({type(e).__name__}: {e})")

    # Viterbi vs forced_align, targets = our 1-best (always feasible)
    from torchaudio.functional import forced_align

    tg_list = [ours.hypotheses(b)[0][0] or [1] for b in range(B)]
    U = max(len(t) for t in tg_list)
    tg = torch.zeros(B, U, dtype=torch.long)
    tl = torch.tensor([len(t) for t in tg_list])
    for b, t in enumerate(tg_list):
        tg[b, : len(t)] = torch.tensor(t)
    K.viterbi_align(lp[:2], tg[:2], lens[:2], tl[:2])
    t_ours = _median_time(lambda: K.viterbi_align(lp, tg, lens, tl), a.repeats)
    t_peer = _median_time(lambda: [forced_align(lp[b : b + 1], tg[b : b + 1, : tl[b]].int()) for b in range(B)], a.repeats)
    al = K.viterbi_align(lp, tg, lens, tl)
    same = np.mean([al.path[b].tolist() == forced_align(lp[b : b + 1], tg[b : b + 1, : tl[b]].int())[0][0].tolist()
                    for b in range(B)])
    res[f"{tag}_viterbi_vs_forced_align_ratio"] = round(t_peer / t_ours, 2)
    res[f"{tag}_viterbi_identical_paths"] = round(float(same), 4)
    print(f"[{tag}] viterbi vs forced_align: {t_peer / t_ours:6.2f}x  identical paths {same:.2%}", flush=True)

    # occupancy vs ctc_loss backward
    def torch_occ():
        x = lp.clone().requires_grad_(True)
        loss = torch.nn.functional.ctc_loss(x.transpose(0, 1), tg, lens, tl, reduction="sum")
        loss.backward()
        return x.detach().exp() - x.grad

    K.ctc_occupancy(lp[:2], tg[:2], lens[:2], tl[:2])
    t_ours = _median_time(lambda: K.ctc_occupancy(lp, tg, lens, tl), a.repeats)
    t_peer = _median_time(torch_occ, a.repeats)
    diff = float((K.ctc_occupancy(lp, tg, lens, tl)[0] - torch_occ()).abs().max())
    res[f"{tag}_occupancy_vs_ctc_backward_ratio"] = round(t_peer / t_ours, 2)
    res[f"{tag}_occupancy_max_abs_diff"] = diff
    print(f"[{tag}] occupancy vs ctc_loss backward: {t_peer / t_ours:6.2f}x  max |diff| {diff:.2e}", flush=True)

    # top-k vs torch.topk + softmax
    k = 8

    def torch_topk():
        v, i = lp.topk(k, dim=-1)
        return v.softmax(-1).half(), i, 1 - v.exp().sum(-1)

    K.topk(lp[:2], lens[:2], k)
    t_ours = _median_time(lambda: K.topk(lp, lens, k), a.repeats)
    t_peer = _median_time(torch_topk, a.repeats)
    same = float((K.topk(lp, lens, k)[1].long() == torch_topk()[1]).float().mean())
    res[f"{tag}_topk_vs_torch_ratio"] = round(t_peer / t_ours, 2)
    res[f"{tag}_topk_same_ids"] = round(same, 4)
    print(f"[{tag}] top-k vs torch.topk+softmax: {t_peer / t_ours:6.2f}x  same ids {same:.2%}", flush=True)

    if a.cuda:
        cuda_size(lp, lens, tg, tl, a, res, tag, t_ours_full, labels)


def cuda_size(lp, lens, tg, tl, a, res, tag, t_cpu_beam, labels):
    import torch

    import speechkd.kernels as K

    dev = torch.device("cuda")
    lpc, lc, tgc, tlc = lp.to(dev), lens.to(dev), tg.to(dev), tl.to(dev)
    sync = torch.cuda.synchronize
    for name, fn_cpu, fn_gpu in [
        ("beam", lambda: K.prefix_beam_search(lp, lens, beam=a.beam, nbest=1, token_min_logp=-5.0),
         lambda: K.prefix_beam_search(lpc, lc, beam=a.beam, nbest=1, token_min_logp=-5.0)),
        ("viterbi", lambda: K.viterbi_align(lp, tg, lens, tl), lambda: K.viterbi_align(lpc, tgc, lc, tlc)),
        ("occupancy", lambda: K.ctc_occupancy(lp, tg, lens, tl), lambda: K.ctc_occupancy(lpc, tgc, lc, tlc)),
        ("topk", lambda: K.topk(lp, lens, 8), lambda: K.topk(lpc, lc, 8)),
    ]:
        fn_gpu()
        tc = _median_time(fn_cpu, a.repeats)
        tgp = _median_time(fn_gpu, a.repeats, sync)
        res[f"{tag}_cuda_{name}_s"] = round(tgp, 5)
        res[f"{tag}_cuda_{name}_speedup_vs_cpu"] = round(tc / tgp, 2)
        print(f"[{tag}] CUDA {name}: {tgp * 1e3:8.2f} ms, {tc / tgp:6.2f}x the CPU kernel", flush=True)
    if a.skip_torchaudio_cuda:
        return
    try:
        from torchaudio.models.decoder import cuda_ctc_decoder

        toks = ["<blk>"] + [f"t{i}" for i in range(1, lp.shape[2])]
        tokf = Path("/tmp/speechkd_tokens.txt")
        tokf.write_text("\n".join(toks) + "\n")
        dec = cuda_ctc_decoder(str(tokf), nbest=1, beam_size=a.beam, blank_skip_threshold=0.95)
        lens32 = lc.to(torch.int32)
        dec(lpc, lens32)
        t_peer = _median_time(lambda: dec(lpc, lens32), a.repeats, sync)
        t_ours = _median_time(lambda: K.prefix_beam_search(lpc, lc, beam=a.beam, nbest=1, blank_skip=0.95,
                                                           token_min_logp=-5.0), a.repeats, sync)
        res[f"{tag}_cuda_beam_vs_torchaudio_cuda_ratio"] = round(t_peer / t_ours, 3)
        print(f"[{tag}] CUDA beam vs torchaudio cuda_ctc_decoder: {t_peer / t_ours:6.3f}x", flush=True)
    except Exception as e:
        print(f"[{tag}] torchaudio cuda_ctc_decoder unavailable ({type(e).__name__}: {e})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="32 utterances x 200 frames")
    ap.add_argument("--utts", type=int, default=256)
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--beam", type=int, default=8)
    ap.add_argument("--peer-utts", type=int, default=64, help="utterances given to pyctcdecode (slow)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vocab", type=int, nargs="+", default=[29, 500])
    ap.add_argument("--skip-torchaudio-cuda", action="store_true",
                    help="skip torchaudio's cuda_ctc_decoder (it crashed with cudaErrorIllegalAddress on our H100 run)")
    ap.add_argument("--cuda-only", action="store_true", help="only the CUDA comparisons (on a GPU machine)")
    ap.add_argument("--posteriors", help="load (B, T, 29) log-posteriors from this .npy instead of running the teacher")
    ap.add_argument("--save-posteriors", help="write the teacher posteriors used to this .npy")
    a = ap.parse_args()
    if a.quick:
        a.utts, a.frames, a.peer_utts, a.repeats = 32, 200, 16, 3
    os.environ.setdefault("NUMBA_NUM_THREADS", str(a.threads))
    import numba
    import torch

    from speechkd.utils import set_threads
    set_threads(a.threads)  # numba first: its pool would reset torch's threads
    numba.set_num_threads(min(a.threads, numba.config.NUMBA_NUM_THREADS))
    a.cuda = torch.cuda.is_available()
    if a.posteriors:
        import numpy as np

        lp29 = torch.from_numpy(np.load(a.posteriors))[: a.utts, : a.frames].contiguous()
        lens, source = torch.full((lp29.shape[0],), lp29.shape[1]), f"teacher posteriors from {a.posteriors}"
        a.utts, a.frames = lp29.shape[:2]
    else:
        lp29, lens, source = teacher_posteriors(a.utts, a.frames)
    if a.save_posteriors:
        import numpy as np

        np.save(a.save_posteriors, lp29.numpy())
    from speechkd.text.tokenizer import CharTokenizer

    chars = CharTokenizer().tokens()
    res: dict = {"posteriors": source, "utterances": a.utts, "frames": a.frames, "beam": a.beam,
                 "threads": a.threads, "repeats": a.repeats, "cuda": a.cuda}
    print(f"posteriors: {source}; {a.utts} utterances x {a.frames} frames; beam {a.beam}; threads {a.threads}")
    for V in a.vocab:
        lp = lp29 if V == 29 else widen(lp29, V)
        labels = chars if V == 29 else ["<blk>", "|"] + [chr(0x4E00 + i) for i in range(V - 2)]
        run_size(lp, lens, labels, a, res, f"v{V}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
