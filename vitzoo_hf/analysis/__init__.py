"""Population analysis of a model zoo: performance, behavioural and weight-space diversity (the paper's Tables 1,
2, 6, 7, 8), for a local zoo folder or a published one, from the weights or from the metadata alone.

Pure maths, one concept per module: `performance`, `agreement`, `weights` (statistics), `distances`, `sketch`;
`checkpoint` (the per-checkpoint metadata columns); `population` (the only module that reads a `Zoo`);
`tables`, `figures`, `run` (`vitzoo analyze`).
"""

from vitzoo_hf.analysis.checkpoint import STAT_COLUMNS, checkpoint_statistics

__all__ = ["STAT_COLUMNS", "checkpoint_statistics"]
