"""holdfast's Python side for training jobs.

- `holdfast.run(train, state=..., load=...)`: in-process restart — on a fault the surviving
  ranks re-form the process group in place and a replaced rank takes the state from a surviving
  replica (see `holdfast.inprocess`). Needs torch; importing `holdfast` does not import it.
- `zygote.py`: the warm standby interpreter the agent runs (shipped inside the agent).
"""
from .inprocess import REFORM_FAILED, Context, run

__all__ = ["run", "Context", "REFORM_FAILED"]
