"""CTC decoding with a word n-gram LM: speechkd's fused beam search against pyctcdecode (KenLM) and
torchaudio's ``ctc_decoder`` (flashlight-text's lexicon decoder, KenLM), one process, one thread, the same
posteriors, the same ARPA file, the same beam width and LM weights.

Per decoder: WER/CER on the split, decoding time (median of --repeats passes, the decoders interleaved) and
its ratio to ours, and search quality: every decoder's 1-best is scored with the one fused objective the
search maximises, ``log P_ctc(tokens) + alpha * ln P_lm(words, </s>) + beta * words``, an unknown word scored
as ``<unk>`` plus ``unk_offset`` and ``unk_char`` per character (log10; exact CTC log-probability by
forward-backward; our LM arrays, which equal KenLM within 1e-4), and we count the utterances where ours is at
least as high as the peer's; with ``unk_char`` set, also with one flat charge per unknown word, which is how
the peers charge them (``..._flat_unk``). The weights are the ones the model's decode stage
tuned on dev (else 0.5 / 1.0); pyctcdecode takes them as they are (it converts KenLM's log10 to ln itself),
flashlight's lm_weight gets alpha * ln 10 (its KenLM scores are log10). Every decoder keeps its own pruning
defaults: ours extends tokens down to -8 in a frame and drops hypotheses 20 below the best (pyctcdecode: -5 and
-10; torchaudio's flashlight: every token, 50 below the best) and recombines hypotheses with the same LM state, partial word
and last token (as both peers do; ``--no-recombine`` turns it off). Ours also runs at pyctcdecode's pruning
(``speechkd_at_pyctcdecode_pruning``): the like-for-like speed. pyctcdecode and flashlight-text come from
``make bench-deps``.

The last line is JSON: per decoder ``wer_<name>``, ``cer_<name>``, ``ms_per_utt_<name>``, then
``speedup_vs_<peer>`` (their time over ours) and ``fused_score_at_least_peer_share`` (per peer: the share of
utterances where our 1-best's fused score is at least theirs; ``..._peer_in_vocabulary``: among the utterances
whose peer 1-best spells no out-of-vocabulary word; ``..._flat_unk``: the same 1-bests scored with one flat
charge), ``speedup_vs_pyctcdecode_at_its_pruning``, and the same
figures per decoder under ``decoders``.

    python benchmarks/lm_decoding.py                 # exp/default's teacher on test (after make demo)
    python benchmarks/lm_decoding.py --model student_frame
    python benchmarks/lm_decoding.py --quick         # pipelines/quick, built if missing, a few utterances
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from speechkd.lm.files import BEAM_PRUNE, TOKEN_MIN_LOGP, UNK_CHAR, UNK_OFFSET  # noqa: E402  (no numba, no torch)


MATCHED = "speechkd_at_pyctcdecode_pruning"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp", default=str(REPO / "exp" / "default"), help="experiment folder (after make demo)")
    ap.add_argument("--model", default="teacher", help="model stage whose posteriors are decoded")
    ap.add_argument("--lm", default="lm", help="lm stage")
    ap.add_argument("--split", default="test", help="featurized split")
    ap.add_argument("--beam", type=int, default=32, help="beam width of every decoder")
    ap.add_argument("--utts", type=int, default=0, help="first N utterances (0 = all)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes; medians are reported")
    ap.add_argument("--no-recombine", action="store_true", help="keep hypotheses with the same future apart")
    ap.add_argument("--alpha", type=float, help="LM weight of every decoder (default: the decode stage's)")
    ap.add_argument("--beta", type=float, help="word bonus of every decoder (default: the decode stage's)")
    ap.add_argument("--token-min-logp", type=float, default=TOKEN_MIN_LOGP, help="our token threshold")
    ap.add_argument("--prune", type=float, default=BEAM_PRUNE, help="our beam pruning")
    ap.add_argument("--unk-char", type=float, help="our log10 cost per character of an unknown word (default: the "
                                                   "decode stage's)")
    ap.add_argument("--unk-offset", type=float, help="our log10 cost per unknown word (default: the decode stage's)")
    ap.add_argument("--quick", action="store_true", help="pipelines/quick (built if missing), few utterances")
    a = ap.parse_args()
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import numpy as np
    import torch

    from speechkd.utils import set_threads
    set_threads(1)  # numba first: its pool would reset torch's threads
    exp = Path(a.exp)
    if a.quick:
        exp = REPO / "exp" / "quick"
        if not (exp / f"decode_{a.model}" / ".done").exists():
            from speechkd.stages.runner import run_recipe

            os.chdir(REPO)
            run_recipe(REPO / "pipelines" / "quick", to_stage=f"decode_{a.model}")
        a.utts, a.repeats = a.utts or 8, min(a.repeats, 2)
    arpa = exp / a.lm / "lm.arpa"
    if not arpa.exists() or not (exp / a.model / "model.safetensors").exists():
        sys.exit(f"{exp}: no {a.lm}/lm.arpa or {a.model}/model.safetensors: run `make demo` first (or use --quick)")
    from speechkd.data.dataset import FeatureDataset
    from speechkd.eval.decode import utterance_posteriors
    from speechkd.eval.scoring import score
    from speechkd.kernels import ctc_occupancy
    from speechkd.lm.decoder import LMDecoder
    from speechkd.models.bundle import load_bundle

    bundle = load_bundle(exp / a.model / "model.safetensors")
    tok = bundle.tokenizer
    if tok.kind != "char":
        sys.exit("this benchmark builds the peers' lexicon from characters: a char tokenizer is needed")
    ds = FeatureDataset(exp / "featurize" / f"{a.split}.jsonl", tok, dim=bundle.model.cfg.input_dim)
    ids, refs, lps = utterance_posteriors(bundle.model, ds, "cpu", 40000)
    if a.utts:
        ids, refs, lps = ids[: a.utts], refs[: a.utts], lps[: a.utts]
    summ = exp / f"decode_{a.model}" / "summary.json"
    w = json.loads(summ.read_text()).get("lm") if summ.exists() else None
    alpha, beta = (float(w["alpha"]), float(w["beta"])) if w else (0.5, 1.0)
    alpha, beta = a.alpha if a.alpha is not None else alpha, a.beta if a.beta is not None else beta
    unk_char = a.unk_char if a.unk_char is not None else float((w or {}).get("unk_char", UNK_CHAR))
    unk_offset = a.unk_offset if a.unk_offset is not None else float((w or {}).get("unk_offset", UNK_OFFSET))
    ours = LMDecoder.load(arpa, tok.tokens(), alpha=alpha, beta=beta, beam=a.beam, blank=tok.blank_id,
                          token_min_logp=a.token_min_logp, prune=a.prune, unk_offset=unk_offset, unk_char=unk_char,
                          recombine=not a.no_recombine)
    # the objective without the spelling cost (one flat <unk> charge per unknown word, as the peers score them)
    flat = ours if unk_char == 0 else LMDecoder(ours.tables, tok.tokens(), alpha=alpha, beta=beta, blank=tok.blank_id,
                                                unk_offset=unk_offset, unk_char=0.0)

    # -- the peers --------------------------------------------------------------------------------------------
    symbols = tok.tokens()
    decoders = {"speechkd": lambda lp: tok.decode(ours.decode(lp)[0].tokens)}
    try:
        from pyctcdecode import build_ctcdecoder
        from pyctcdecode.constants import DEFAULT_MIN_TOKEN_LOGP, DEFAULT_PRUNE_LOGP

        labels = ["" if i == tok.blank_id else (" " if s == "|" else s) for i, s in enumerate(symbols)]
        pyctc = build_ctcdecoder(labels, kenlm_model_path=str(arpa), alpha=alpha, beta=beta)
        decoders["pyctcdecode"] = lambda lp: pyctc.decode(lp, beam_width=a.beam)
        # ours again, at pyctcdecode's pruning: the like-for-like speed
        matched = LMDecoder(ours.tables, tok.tokens(), alpha=alpha, beta=beta, beam=a.beam, blank=tok.blank_id,
                            token_min_logp=DEFAULT_MIN_TOKEN_LOGP, prune=DEFAULT_PRUNE_LOGP, unk_offset=unk_offset,
                            unk_char=unk_char, recombine=not a.no_recombine)
        decoders[MATCHED] = lambda lp: tok.decode(matched.decode(lp)[0].tokens)
    except ImportError as e:
        print(f"pyctcdecode not installed ({e}); `make bench-deps`", file=sys.stderr)
    try:
        from torchaudio.models.decoder import ctc_decoder

        words = sorted(ours.tables.words[i] for i in range(len(ours.tables.words))
                       if ours.tables.words[i] not in ("<s>", "</s>", "<unk>") and all(c in symbols for c in ours.tables.words[i]))
        lex = Path(tempfile.mkdtemp()) / "lexicon.txt"
        lex.write_text("".join(f"{w_} {' '.join(w_)} |\n" for w_ in words))
        fl = ctc_decoder(lexicon=str(lex), tokens=symbols, lm=str(arpa), beam_size=a.beam, lm_weight=alpha * math.log(10),
                         word_score=beta, blank_token=symbols[tok.blank_id], sil_token="|", unk_word="<unk>")

        def flashlight(lp):
            hyp = fl(torch.from_numpy(lp)[None])[0]
            return " ".join(hyp[0].words) if hyp else ""
        decoders["flashlight"] = flashlight
    except (ImportError, RuntimeError) as e:  # torchaudio raises RuntimeError when flashlight-text is missing
        print(f"flashlight-text not installed ({e}); `make bench-deps`", file=sys.stderr)

    # -- timing, interleaved ----------------------------------------------------------------------------------
    hyps = {k: [f(lp) for lp in lps] for k, f in decoders.items()}  # warm-up, and the outputs
    times: dict[str, list[float]] = {k: [] for k in decoders}
    for _ in range(a.repeats):
        for k, f in decoders.items():
            t0 = time.perf_counter()
            for lp in lps:
                f(lp)
            times[k].append(time.perf_counter() - t0)

    # -- search quality: the one fused objective, for every decoder's 1-best ----------------------------------
    def fused(text: str, lp, scorer) -> float:
        toks = tok.encode(" ".join(text.split()))
        if not toks:
            ll = float(lp[:, tok.blank_id].astype(np.float64).sum())
        else:
            ll = float(ctc_occupancy(lp[None], np.asarray([toks]), blank=tok.blank_id)[1][0])
        return scorer.fused_score(toks, ll)

    scores = {k: [fused(h, lp, ours) for h, lp in zip(hs, lps)] for k, hs in hyps.items()}
    flat_scores = scores if flat is ours else {k: [fused(h, lp, flat) for h, lp in zip(hs, lps)]
                                               for k, hs in hyps.items()}
    frames = sum(len(lp) for lp in lps)
    res = {"exp": str(exp), "model": a.model, "split": a.split, "utterances": len(lps), "frames": frames,
           "beam": a.beam, "alpha": alpha, "beta": beta, "recombine": ours.recombine,
           "token_min_logp": ours.token_min_logp, "prune": ours.prune, "unk_offset": unk_offset,
           "unk_char": unk_char, "threads": 1,
           "repeats": a.repeats, "decoders": {}}
    in_vocab = set(ours.tables.words)

    def share(mine: str, k: str, only=None, by=scores) -> float:
        idx = [i for i in range(len(lps)) if only is None or only(i)]
        return round(float(np.mean([by[mine][i] >= by[k][i] - 1e-6 for i in idx])), 4) if idx else None

    peers = [k for k in decoders if k not in ("speechkd", MATCHED)]
    for k in decoders:
        s = score(refs, hyps[k])
        t = statistics.median(times[k])
        row = {"wer": round(s["wer"], 2), "cer": round(s["cer"], 2), "seconds": round(t, 4),
               "ms_per_utt": round(1e3 * t / len(lps), 3), "us_per_frame": round(1e6 * t / frames, 2)}
        if k in peers:
            row["speedup_of_speechkd"] = round(t / statistics.median(times["speechkd"]), 2)
            row["speechkd_fused_at_least_as_high"] = share("speechkd", k)
            if flat is not ours:  # the same 1-best hypotheses scored with one flat <unk> charge per unknown word
                row["speechkd_fused_at_least_as_high_flat_unk"] = share("speechkd", k, by=flat_scores)
            # where the peer's 1-best spells no out-of-vocabulary word: the objective charges one <unk> per word
            # whatever its length, so a run of words spelled as one unknown string can outscore them
            clean = lambda i: all(w in in_vocab for w in hyps[k][i].split())  # noqa: E731
            row["utterances_peer_in_vocabulary"] = sum(map(clean, range(len(lps))))
            row["speechkd_fused_at_least_as_high_peer_in_vocabulary"] = share("speechkd", k, clean)
            lost = [i for i in range(len(lps)) if scores["speechkd"][i] < scores[k][i] - 1e-6]
            if lost:  # where the peer's 1-best scores higher: how many spell an unknown word, and both WERs
                row["peer_higher_utterances"] = len(lost)
                row["peer_higher_with_unknown_word"] = sum(not clean(i) for i in lost)
                row["peer_higher_wer"] = {m: round(score([refs[i] for i in lost], [hyps[m][i] for i in lost])["wer"], 2)
                                          for m in ("speechkd", k)}
        res["decoders"][k] = row
        res[f"wer_{k}"], res[f"cer_{k}"], res[f"ms_per_utt_{k}"] = row["wer"], row["cer"], row["ms_per_utt"]
    for k in peers:
        res[f"speedup_vs_{k}"] = res["decoders"][k]["speedup_of_speechkd"]
    res["fused_score_at_least_peer_share"] = {k: res["decoders"][k]["speechkd_fused_at_least_as_high"] for k in peers}
    res["fused_score_at_least_peer_share_peer_in_vocabulary"] = {
        k: res["decoders"][k]["speechkd_fused_at_least_as_high_peer_in_vocabulary"] for k in peers}
    if flat is not ours:
        res["fused_score_at_least_peer_share_flat_unk"] = {
            k: res["decoders"][k]["speechkd_fused_at_least_as_high_flat_unk"] for k in peers}
    if MATCHED in decoders:
        res["speedup_vs_pyctcdecode_at_its_pruning"] = round(
            statistics.median(times["pyctcdecode"]) / statistics.median(times[MATCHED]), 2)
        res["fused_score_at_least_pyctcdecode_share_at_its_pruning"] = share(MATCHED, "pyctcdecode")
    if peers:
        best = min(peers, key=lambda k: res["decoders"][k]["wer"])
        res["wer_minus_best_peer"] = round(res["decoders"]["speechkd"]["wer"] - res["decoders"][best]["wer"], 2)
    for k, row in res["decoders"].items():
        print(f"{k:12s} WER {row['wer']:6.2f}  CER {row['cer']:6.2f}  {row['us_per_frame']:9.1f} us/frame"
              + (f"  ours {row['speedup_of_speechkd']:.1f}x faster, fused score >= theirs on "
                 f"{100 * row['speechkd_fused_at_least_as_high']:.1f}%" if k in peers else ""), file=sys.stderr)
    out = exp / "benchmarks" / f"lm_decoding-{a.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
