"""The face experiment in one command: the seed paper's Tables 6 and 7 on real faces, with baselines.

Stages (each cached under the run folder by a key of the config parts it depends on; an interrupted run
resumes at the first unfinished stage, and inside crafting, training and protecting at the first
unfinished chunk, epoch or photo):

1. prepare the CelebA-wild and CFP face sets (detection + alignment);
2. identity split: release / held-out / CFP evaluation folds;
3. CosFace surrogates trained on the clean release set;
4. poisons over the release set (alignment at each ε and surrogate; random and TensorClog baselines);
5. one victim trained from scratch on each set;
6. evaluation: held-out kNN identification, CFP-FF/FP verification (LFW and ``.bin`` sets when given);
7. the protect path: the release photos protected by ``facepoison protect``'s engine (bundled surrogate,
   imprinted identities), re-detected and aligned as a scraper would, and a victim trained on them.

Modules: :mod:`~facepoison.experiment.config` (the YAML config), :mod:`~facepoison.experiment.stages`
(stages and caching), :mod:`~facepoison.experiment.run` (the run), :mod:`~facepoison.experiment.report`.
"""

from facepoison.experiment.config import ExperimentConfig, ExperimentData, PoisonRun, ProtectStage, protect_modes
from facepoison.experiment.report import goals, poisoned_faces_figure, write_report
from facepoison.experiment.run import run_experiment
from facepoison.experiment.stages import Stages, key

__all__ = ["ExperimentConfig", "ExperimentData", "PoisonRun", "ProtectStage", "Stages", "goals", "key",
           "poisoned_faces_figure", "protect_modes", "run_experiment", "write_report"]
