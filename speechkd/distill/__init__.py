"""Knowledge distillation: the teacher cache (sparse posteriors + N-best on disk) and KD losses."""
