"""Scoring a model on a manifest of raw audio (no recipe, no featurize stage).

``.onnx`` models go through the streaming runtime (exactly what ``speechkd transcribe`` does);
``.safetensors`` models run offline in torch on the whole utterance's fbank. Rows whose audio cannot
be read are reported and skipped; the rest are scored.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from speechkd.data.manifest import iter_manifest
from speechkd.utils import progress

log = logging.getLogger(__name__)


def onnx_transcriber(model: str | Path, chunk_ms: float = 160.0, num_threads: int = 1, *, lm=None,
                     lm_weights: dict | None = None) -> Callable[[Path], str]:
    """Through the streaming runtime; ``lm``/``lm_weights`` as :class:`~speechkd.runtime.recognizer.StreamingRecognizer`
    takes them (an LM-fused beam carried across chunks)."""
    from speechkd.runtime.recognizer import StreamingRecognizer, transcribe_file

    rec = StreamingRecognizer(model, num_threads=num_threads, lm=lm, lm_weights=lm_weights)
    return lambda path, offset=None, duration=None: transcribe_file(rec, path, chunk_ms, offset=offset,
                                                                    duration=duration).text


def sherpa_decoder(model: str | Path, chunk_ms: float = 160.0, num_threads: int = 1) -> Callable[..., str]:
    """``decode(samples, sample_rate) -> text`` with sherpa-onnx's online recognizer (a model from
    ``speechkd export --format sherpa``): ``chunk_ms`` chunks, then the model's ``tail_padding_ms`` of
    silence, as a service would feed it."""
    import numpy as np
    import onnxruntime as ort
    import sherpa_onnx

    model = Path(model)
    tokens = model.parent / "tokens.txt"
    if not tokens.is_file():
        raise ValueError(f"{tokens}: tokens file not found (a sherpa-onnx model needs it beside model.onnx)")
    try:
        pad_ms = int(float(ort.InferenceSession(str(model)).get_modelmeta().custom_metadata_map.get(
            "tail_padding_ms", 0)))
    except ValueError:
        raise ValueError(f"{model}: metadata tail_padding_ms is not a number") from None
    if not 0 <= pad_ms <= 10_000:
        raise ValueError(f"{model}: metadata tail_padding_ms={pad_ms} is out of range [0, 10000]")
    rec = sherpa_onnx.OnlineRecognizer.from_nemo_ctc(tokens=str(tokens), model=str(model),
                                                     num_threads=num_threads)

    def decode(wav, sr: int) -> str:
        from speechkd.data.audio import check_samples

        check_samples(np.asarray(wav), "audio")  # the same refusal as the ONNX and torch paths
        s = rec.create_stream()
        step = max(1, int(sr * chunk_ms / 1000))
        for i in range(0, len(wav), step):
            s.accept_waveform(sr, wav[i : i + step])
            while rec.is_ready(s):
                rec.decode_stream(s)
        s.accept_waveform(sr, np.zeros(int(pad_ms * sr / 1000), np.float32))
        s.input_finished()
        while rec.is_ready(s):
            rec.decode_stream(s)
        return " ".join(rec.get_result(s).split())

    return decode


def sherpa_transcriber(model: str | Path, chunk_ms: float = 160.0, num_threads: int = 1) -> Callable[[Path], str]:
    """:func:`sherpa_decoder` of an audio file."""
    from speechkd.runtime.recognizer import read_audio

    decode = sherpa_decoder(model, chunk_ms, num_threads)
    return lambda path, offset=None, duration=None: decode(*read_audio(path, offset, duration))


def is_sherpa_model(model: str | Path) -> bool:
    """A model written by ``speechkd export --format sherpa`` (sherpa-onnx's NeMo CTC metadata, not ours).
    Reads the metadata only (no inference session is built)."""
    import onnx

    try:
        meta = {p.key for p in onnx.load(str(model), load_external_data=False).metadata_props}
    except Exception:
        return False
    return "window_size" in meta and "speechkd_format" not in meta


def torch_transcriber(model: str | Path, device: str = "auto", *, lm=None, lm_weights: dict | None = None):
    """``transcribe(path, offset=None, duration=None) -> text`` with a model bundle in torch, offline on the
    whole utterance's fbank (the bundle's fbank options and tokenizer); greedy, or with ``lm`` (an ARPA file or
    a folder holding one; True: the one beside the model) the LM-fused beam search."""
    import torch

    from speechkd.data.audio import load_audio
    from speechkd.eval.scoring import greedy_decode
    from speechkd.features.fbank import compute_fbank
    from speechkd.models.bundle import load_bundle
    from speechkd.utils import pick_device

    dev = pick_device(device)
    bundle = load_bundle(model, device=dev)
    m, tok, opts = bundle.model, bundle.tokenizer, bundle.fbank
    from speechkd.lm.decoder import load_choice

    decoder = load_choice(model, lm, tok.tokens(), tok.blank_id, lm_weights)

    @torch.no_grad()
    def run(path: Path, offset=None, duration=None) -> str:
        wav = load_audio(path, offset=offset, duration=duration, target_sr=opts.sample_rate)
        feats = compute_fbank(wav, opts)[None].to(dev)
        lp, ol = m(feats, torch.tensor([feats.shape[1]], device=dev))
        if decoder is not None:
            hyps = decoder.decode(lp[0, : int(ol[0])].float().cpu().numpy())
            return tok.decode(hyps[0].tokens if hyps else [])
        return tok.decode(greedy_decode(lp, ol, tok.blank_id)[0])

    return run


def evaluate_manifest(transcribe: Callable, manifest: str | Path, *, limit: int = 0,
                      desc: str | None = None) -> dict[str, Any]:
    """Transcribe the first ``limit`` rows of ``manifest`` (0 = all); returns ``ids``, ``refs``, ``hyps``
    (whatever ``transcribe`` returns) and ``failed`` (``[(id, path, message)]`` for rows whose audio
    could not be used)."""
    manifest = Path(manifest)
    rows = list(iter_manifest(manifest))[: limit or None]
    for lineno, u in enumerate(rows, 1):
        if u.text is None:
            raise ValueError(f"{manifest}: entry {lineno} ({u.id}) has no transcript: an untranscribed manifest "
                             "cannot be scored (transcribe it instead)")
    ids, refs, hyps, failed = [], [], [], []
    for u in progress(rows, desc=desc or f"eval {manifest.name}", unit="utt"):
        path = u.resolve_audio(manifest.parent)
        try:
            if u.offset is not None:  # a segment: every model kind reads just its span
                hyp = transcribe(path, u.offset, u.duration)
            else:
                hyp = transcribe(path)
        except ValueError as e:
            msg = str(e) if str(path) in str(e) else f"{path}: {e}"
            log.warning("skipping %s: %s", u.id, msg)
            failed.append((u.id, str(path), msg))
            continue
        ids.append(u.id)
        refs.append(u.text)
        hyps.append(hyp)
    return {"ids": ids, "refs": refs, "hyps": hyps, "failed": failed}
