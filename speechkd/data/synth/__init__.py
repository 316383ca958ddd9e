"""The embedded corpus ``synth-en``: text from Debian's fortunes and WordNet, spoken by
espeak-ng, flite and festival voices, generated at build time (never committed)."""

from speechkd.data.synth.build import CorpusSpec, build_corpus, load_spec, plan_corpus

__all__ = ["CorpusSpec", "load_spec", "plan_corpus", "build_corpus"]
