"""ViewNeTI's training modes as one typed table (stdlib only, so the CLI can build its options without torch).

The paper's modes: 0 textual inversion, 2 view- and object-mapper from scratch, 3 view-mapper
pretraining on many scenes, 4 fine-tuning a pretrained view-mapper with a new object, 5 a new
object with the pretrained view-mapper frozen (the single-view novel-view setting). Mode 1 is unused.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingMode:
    """What one of the paper's training modes optimises and from what (mode 1 is unused in ViewNeTI)."""

    number: int
    summary: str
    uses_view: bool  # cameras matter: the scenes need poses and a view-mapper takes part
    trains_view: bool  # the view-mapper is optimised (else, if used, it is frozen)
    pretrained_view: bool  # starts from a pretrained (mode-3) view-mapper, which the caller must pass
    many_scenes: bool  # several scenes, one object-mapper each (else exactly one scene)
    augmentation: int  # the augmentation key when TrainConfig.augmentation is None


TRAINING_MODES: dict[int, TrainingMode] = {
    m.number: m
    for m in (
        TrainingMode(0, "textual inversion: an object token only, no cameras", False, False, False, False, 7),
        TrainingMode(2, "view- and object-mapper from scratch on one scene", True, True, False, False, 7),
        TrainingMode(3, "pretrain a view-mapper on many scenes", True, True, False, True, 5),
        TrainingMode(4, "fine-tune a pretrained view-mapper with a new object token", True, True, True, False, 7),
        TrainingMode(5, "a new object token with a frozen pretrained view-mapper", True, False, True, False, 7),
    )
}
MODES = tuple(TRAINING_MODES)
