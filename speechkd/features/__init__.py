"""Log-mel fbank, global CMVN, SpecAugment, VTLP and the sharded feature store."""

from speechkd.features.cmvn import GlobalCMVN, apply_cmvn, compute_cmvn
from speechkd.features.fbank import Fbank, FbankOptions, compute_fbank
from speechkd.features.specaug import SpecAugment, spec_augment
from speechkd.features.store import FeatureRef, FeatureStore, write_shard
from speechkd.features.vtlp import vtlp

__all__ = ["FbankOptions", "compute_fbank", "Fbank", "compute_cmvn", "apply_cmvn", "GlobalCMVN", "spec_augment",
           "SpecAugment", "vtlp", "FeatureRef", "FeatureStore", "write_shard"]
