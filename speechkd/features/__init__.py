"""Log-mel fbank, global CMVN, SpecAugment and the sharded feature store."""

from speechkd.features.cmvn import GlobalCMVN, apply_cmvn, compute_cmvn
from speechkd.features.fbank import Fbank, FbankOptions, compute_fbank
from speechkd.features.specaug import SpecAugment, spec_augment
from speechkd.features.store import FeatureRef, FeatureStore, write_shard

__all__ = ["FbankOptions", "compute_fbank", "Fbank", "compute_cmvn", "apply_cmvn", "GlobalCMVN", "spec_augment",
           "SpecAugment", "FeatureRef", "FeatureStore", "write_shard"]
