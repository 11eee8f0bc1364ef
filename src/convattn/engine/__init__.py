"""Training, evaluation, checkpoints, distributed runs, measurements and reports.

One generic loop (:func:`fit`) driven by a task object; the commands
``convattn train``/``eval``/``compare`` and later task commands all use it.
"""

from .checkpoint import load_checkpoint, read_metadata, save_checkpoint
from .distributed import World
from .progress import Progress
from .tasks import ClassificationTask, Task
from .trainer import FitResult, TrainConfig, build_model, evaluate, fit

__all__ = [
    "ClassificationTask",
    "FitResult",
    "Progress",
    "Task",
    "TrainConfig",
    "World",
    "build_model",
    "evaluate",
    "fit",
    "load_checkpoint",
    "read_metadata",
    "save_checkpoint",
]
