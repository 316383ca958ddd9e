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


def onnx_transcriber(model: str | Path, chunk_ms: float = 160.0, num_threads: int = 1) -> Callable[[Path], str]:
    from speechkd.runtime.recognizer import StreamingRecognizer, transcribe_file

    rec = StreamingRecognizer(model, num_threads=num_threads)
    return lambda path: transcribe_file(rec, path, chunk_ms).text


def torch_transcriber(model: str | Path, tokenizer_dir: str | Path | None = None, device: str = "auto"):
    import torch

    from speechkd.data.audio import load_audio
    from speechkd.eval.decode import pick_device
    from speechkd.eval.scoring import greedy_decode
    from speechkd.export.onnx import model_fbank
    from speechkd.features.fbank import compute_fbank
    from speechkd.models.io import check_vocabulary, load_model
    from speechkd.text.tokenizer import load_tokenizer

    dev = pick_device(device)
    m = load_model(model, device=dev).eval()
    tok = load_tokenizer(tokenizer_dir or Path(model).parent)
    check_vocabulary(m, tok, model)
    opts = model_fbank(Path(model).parent, m.cfg.frame_shift_ms)

    @torch.no_grad()
    def run(path: Path, offset=None, duration=None) -> str:
        wav = load_audio(path, offset=offset, duration=duration, target_sr=opts.sample_rate)
        feats = compute_fbank(wav, opts)[None].to(dev)
        lp, ol = m(feats, torch.tensor([feats.shape[1]], device=dev))
        return tok.decode(greedy_decode(lp, ol, tok.blank_id)[0])

    return run


def evaluate_manifest(transcribe: Callable, manifest: str | Path, *, segments_ok: bool = False) -> dict[str, Any]:
    """Transcribe every row of ``manifest``; returns ``ids``, ``refs``, ``hyps`` and ``failed``
    (``[(id, path, message)]`` for rows whose audio could not be used)."""
    manifest = Path(manifest)
    rows = list(iter_manifest(manifest))
    ids, refs, hyps, failed = [], [], [], []
    for u in progress(rows, desc=f"eval {manifest.name}", unit="utt"):
        path = u.resolve_audio(manifest.parent)
        try:
            if u.offset is not None:
                if not segments_ok:
                    raise ValueError("segments (rows with 'offset') are scored with .safetensors models only")
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
