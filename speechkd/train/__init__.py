"""One trainer for teachers and students: data, bucketing, checkpoints with exact resume, DDP."""
