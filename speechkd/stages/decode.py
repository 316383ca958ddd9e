"""Stage ``decode``: decoding and scoring of a trained model, greedy and with a search.

Writes, per split, icefall-style ``recogs-<split>.txt`` and ``errs-<split>.txt`` (aligned
references and hypotheses), ``results-<split>.jsonl`` and ``wer-summary-<split>.json`` (WER, CER,
substitutions, deletions, insertions) for greedy decoding, plus ``summary.json`` over all splits.
With ``decoder: beam`` (the CTC prefix beam) or ``decoder: lm`` (the beam fused with the word LM of the
``lm`` stage) the same files are also written as ``<split>-beam`` / ``<split>-lm``; for ``lm`` the weights
``alpha`` and ``beta`` are picked on ``tune_split`` from the grid ``alphas`` x ``betas``, and the whole grid is
recorded in ``summary.json``.

Under ``torchrun`` every rank takes a share of each split (every ``world``-th batch of the one-process
batching, so the posteriors are those of one process), decodes it with every grid point and with the picked
weights; the texts are gathered (not the posteriors), every rank picks the same weights from the whole
split's scores, and rank 0 writes the reports, which equal one process's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch

from speechkd.config import check_name, field, require
from speechkd.data.dataset import FeatureDataset
from speechkd.eval.decode import greedy_hyps, merge_parts, posteriors_part
from speechkd.eval.lmdecode import search_hyps, tune
from speechkd.eval.scoring import write_reports
from speechkd.lm.files import BEAM_PRUNE, TOKEN_MIN_LOGP, UNK_CHAR, UNK_OFFSET
from speechkd.models.bundle import load_bundle
from speechkd.models.lstm_ctc import count_parameters
from speechkd.stages import MODEL_STAGES
from speechkd.features.fbank import read_fbank_options
from speechkd.stages.featurize import declared_splits, untranscribed_splits
from speechkd.utils import atomic_write_text, gather_all, pick_device, rank_world

log = logging.getLogger(__name__)

DISTRIBUTED = True  # every rank decodes a share of each split


@dataclass
class Config:
    model: str = field("teacher", help="stage whose model is decoded")
    checkpoint: Literal["model.safetensors", "best.safetensors"] = field(
        "model.safetensors", help="weights file in that stage (the averaged model or the best epoch)")
    featurize: str = field("featurize", help="featurize stage holding the splits")
    splits: list[str] = field(default_factory=list, help="splits to score (default: every split the featurize "
                                                         "stage writes except the training split)")
    train_split: str = field("train", help="the split left out of the default splits")
    max_frames: int = field(40000, help="padded frames per decoding batch")
    device: Literal["auto", "cpu", "cuda"] = field("auto", help="where to decode")
    decoder: Literal["greedy", "beam", "lm"] = field("greedy", help="search besides greedy decoding: none, the CTC "
                                                                  "prefix beam, or the beam fused with a word LM")
    lm: str = field("", help="decoder lm: the lm stage whose lm.arpa is fused")
    beam: int = field(32, help="decoder beam/lm: hypotheses kept per frame")
    alphas: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.7, 1.0], help="decoder lm: LM weights tried")
    betas: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0], help="decoder lm: word bonuses tried")
    tune_split: str = field("dev", help="decoder lm: the split the weights are picked on")
    token_min_logp: float = field(TOKEN_MIN_LOGP, help="decoder lm: tokens below this log-posterior in a frame are "
                                                        "not extended (the frame's best always is)")
    prune: float = field(BEAM_PRUNE, help="decoder lm: hypotheses this far below the best are dropped (-inf: never)")
    unk_offset: float = field(UNK_OFFSET, help="decoder lm: extra log10 cost of an out-of-vocabulary word")
    unk_char: float = field(UNK_CHAR, help="decoder lm: extra log10 cost per character of an out-of-vocabulary "
                                           "word (<= 0)")
    recombine: bool = field(True, help="decoder lm: of hypotheses with the same LM state, partial word and last "
                                       "token keep the best only (their futures are the same)")

    def __post_init__(self):
        require(self.beam >= 1, "beam", f"must be >= 1, got {self.beam}")
        require(self.decoder != "lm" or bool(self.lm), "lm", "decoder lm needs the lm stage to fuse")
        require(self.decoder != "lm" or (bool(self.alphas) and bool(self.betas)), "alphas",
                "decoder lm needs at least one alpha and one beta")
        check_name(self.tune_split, "tune_split", "split name")
        check_name(self.train_split, "train_split", "split name")
        for i, s in enumerate(self.splits):
            check_name(s, f"splits[{i}]", "split name")
        require(self.max_frames >= 1, "max_frames", f"must be >= 1, got {self.max_frames}")
        require(self.unk_char <= 0, "unk_char", f"must be <= 0 (a cost), got {self.unk_char}")


def upstream(cfg: Config) -> list[tuple[str, str, tuple[str, ...]]]:
    up = [("model", cfg.model, MODEL_STAGES), ("featurize", cfg.featurize, ("featurize",))]
    return up + ([("lm", cfg.lm, ("lm",))] if cfg.decoder == "lm" else [])


def check(cfg: Config, lookup) -> None:
    from speechkd.stages import check_splits

    from speechkd.stages import planned_untranscribed

    check_splits(cfg.splits, lookup(cfg.featurize), lookup)
    unt = planned_untranscribed(lookup(cfg.featurize), lookup) or []
    for i, s in enumerate(cfg.splits):
        if s in unt:
            raise ValueError(f"splits[{i}]: {s!r} is untranscribed: it has no transcripts to score against")


def run(cfg: Config, ctx) -> dict[str, Any]:
    mdir, fdir = ctx.stage_dir(cfg.model), ctx.stage_dir(cfg.featurize)
    device = pick_device(cfg.device)
    bundle = load_bundle(mdir / cfg.checkpoint, device=device)
    model, tok = bundle.model, bundle.tokenizer
    if read_fbank_options(fdir) != bundle.fbank:
        raise ValueError(f"{mdir / cfg.checkpoint}: the model was trained on other fbank options than "
                         f"{fdir / 'features.json'} describes; decode it on features made with its own options")
    out: dict[str, Any] = {"model": f"{cfg.model}/{cfg.checkpoint}", "parameters": count_parameters(model),
                           "bidirectional": model.cfg.bidirectional, "splits": {}}
    have = declared_splits(fdir)
    unt = untranscribed_splits(fdir)
    splits = cfg.splits or [s for s in have if s != cfg.train_split and s not in unt]
    for split in splits:
        if split in unt:
            raise ValueError(f"decode.splits: {split!r} is untranscribed ({fdir / 'summary.json'}): it has no "
                             "transcripts to score against")
        if split not in have or not (fdir / f"{split}.jsonl").exists():  # a featurize rerun may differ
            raise FileNotFoundError(f"decode.splits: {fdir} has no split {split!r} (it has {', '.join(have)})")
    posteriors = {}
    rank, world = rank_world()

    def post(split):  # this rank's share: (positions, ids, refs, log-probs)
        if split not in posteriors:
            ds = FeatureDataset(fdir / f"{split}.jsonl", tok, dim=model.cfg.input_dim)
            posteriors[split] = posteriors_part(model, ds, device, cfg.max_frames, rank=rank, world=world)
        return posteriors[split]

    def whole(split, *texts):  # this rank's lists of texts -> the whole split's, in the one-process order
        merged = merge_parts(gather_all((post(split)[0], list(zip(*texts)))))
        return [list(x) for x in zip(*merged)] if merged else [[] for _ in texts]

    decoder, threads = None, max(1, torch.get_num_threads())
    if cfg.decoder == "lm":
        from speechkd.lm.decoder import LMDecoder

        decoder = LMDecoder.load(ctx.stage_dir(cfg.lm), tok.tokens(), beam=cfg.beam, blank=tok.blank_id,
                                 token_min_logp=cfg.token_min_logp, prune=cfg.prune, unk_offset=cfg.unk_offset,
                                 unk_char=cfg.unk_char, recombine=cfg.recombine)
        if cfg.tune_split not in have:
            raise FileNotFoundError(f"decode.tune_split: {fdir} has no split {cfg.tune_split!r}")
        _, _, refs, lps = post(cfg.tune_split)
        a, b, grid = tune(decoder, lps, refs, tok, cfg.alphas, cfg.betas, threads,
                          merge=lambda refs, hyps: whole(cfg.tune_split, refs, hyps))
        decoder = decoder.with_weights(a, b)
        out["lm"] = {"stage": cfg.lm, "alpha": a, "beta": b, "beam": cfg.beam, "token_min_logp": cfg.token_min_logp,
                     "prune": cfg.prune, "unk_offset": cfg.unk_offset, "unk_char": cfg.unk_char,
                     "recombine": cfg.recombine, "tuned_on": cfg.tune_split, "grid": grid, "splits": {}}
        log.info("decode: LM weights alpha=%g beta=%g picked on %s", a, b, cfg.tune_split)
    elif cfg.decoder == "beam":
        out["beam"] = {"beam": cfg.beam, "splits": {}}
    for split in splits:
        _, ids, refs, lps = post(split)
        texts = [ids, refs, greedy_hyps(lps, tok)]
        if cfg.decoder != "greedy":
            texts.append(search_hyps(lps, tok, decoder=decoder, beam=cfg.beam, threads=threads))
        ids, refs, *hyps_of = whole(split, *texts)
        posteriors.pop(split, None)
        if rank != 0:
            continue
        rows = [("", hyps_of[0], out["splits"])]
        if cfg.decoder != "greedy":
            rows.append((f"-{cfg.decoder}", hyps_of[1], out[cfg.decoder]["splits"]))
        for suffix, hyps, dest in rows:
            summ = write_reports(ctx.out_dir, split + suffix, ids, refs, hyps, {"model": out["model"]})
            dest[split] = {k: summ[k] for k in ("wer", "cer", "substitutions", "deletions", "insertions",
                                                "ref_words", "utterances")}
            log.info("decode %s%s: WER %.2f%% CER %.2f%% (%d utterances)", split, suffix, summ["wer"], summ["cer"],
                     summ["utterances"])
    if rank != 0:
        return {}
    if not out["splits"]:
        raise FileNotFoundError(f"{fdir}: none of the splits {splits} was featurized; nothing to decode")
    atomic_write_text(ctx.out_dir / "summary.json", json.dumps(out, indent=1) + "\n")
    return out
