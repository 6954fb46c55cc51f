"""One error family for the tooling: every problem a user can fix is a `MosaicBertError` (a `ValueError`) whose
message names the problem and the fix. The model files raise plain `ValueError`s (they import nothing from here)."""


class MosaicBertError(ValueError):
    """Base of every error the tooling raises for bad input, settings or state."""


class RecipeError(MosaicBertError):
    """A recipe (YAML or override) is invalid or inconsistent."""


class DataError(MosaicBertError):
    """Training or evaluation data cannot be found, read or used."""


class ResumeError(RecipeError):
    """A checkpoint cannot be resumed with this recipe, or an output folder is in use."""


class ExportError(MosaicBertError):
    """A folder cannot be published (not a finished model folder, or no Hub repo named)."""


class GlueDataError(DataError):
    """GLUE data for a task is missing or malformed."""


class RunLockedError(ResumeError):
    """The output folder is in use by another run (it holds the folder's lock)."""


class CheckpointError(MosaicBertError):
    """A checkpoint cannot be written (e.g. the disk is full); the previous one is intact."""


class ModelLoadError(MosaicBertError):
    """A model or tokenizer to fine-tune cannot be found or loaded (missing folder, unknown Hub id, remote code not
    allowed)."""
